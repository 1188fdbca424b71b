"""Offline checks of the Kubernetes manifests under k8s/; ``scripts/check_k8s.py`` runs them.

checker.py says what is checked and drives it; each other module has one job:

* contract.py: what the image and its ``raee`` commands are (keys, ports, flags);
* model.py: the rendered objects as typed values (pod templates, env, the problem list);
* render.py: kubectl, ``kubectl kustomize`` of every deployable kustomization, the schemas;
* workloads.py: selectors, Services, StatefulSets, PDBs and HPAs, namespaces, references;
* containers.py: every container, and the ``raee`` ones against their command;
* ingest.py: task specs, sharded ingests and their publish Jobs;
* qdrant.py: Qdrant against its config file;
* network.py: the NetworkPolicy flow;
* overlays.py: the cluster-level rules of each overlay;
* source.py: the Dockerfile, pyproject.toml and the code.
"""
