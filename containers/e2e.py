"""The image, run the way k8s/base runs it, checked from the host (``make e2e-containers``).

Containers take their command, args, environment, user, read-only root
filesystem and mounts from the rendered manifests (``kubectl kustomize``; see
pods.py). What differs from a cluster, and why:

- the store is the embedded one on a shared host folder (``RAEE_QDRANT_URL=""``,
  ``RAEE_HOME``), as no Qdrant server image can be pulled here;
- the services talk over a podman network whose aliases are the Services' names
  (``raee-retrieval``), and their ports are published on 127.0.0.1 only, on free
  ports;
- ``OMP_NUM_THREADS`` is capped at this machine's cores; CPU limits are not set.

Checks, each printed PASS/FAIL with its time:
1. gRPC health reaches SERVING in the retrieval and inference containers;
2. the demo task, ingested by ``raee ingest`` in its own container, is classified
   over gRPC from the host, and the answers equal ``raee classify`` outside
   containers (the host's environment, the same store);
3. a second task ingested while serving is answered with no restart;
4. SIGTERM under a 16-client load: every call in flight is answered, then the
   container exits 0 (inference worker, then retrieval service);
5. the baked-weights image (k8s/overlays/prod-baked) serves with its cache
   read-only, its files' mtimes truncated to whole seconds.

    python containers/e2e.py --image localhost/raee:dev [--baked-image localhost/raee:dev-baked]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pods import Manifest, RunSpec, config_maps, pod_spec, render

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's packages, before any installed copy

from raee.v1 import retrieval_pb2, retrieval_pb2_grpc  # noqa: E402
from raee_cli.client import InferenceClient  # noqa: E402

DEMO = ROOT / "raee_cli" / "demo"
UID = 10001
NETWORK = "raee-e2e"
LOAD_CLIENTS = 16
STORE_PATH = "/var/lib/raee"  # the embedded store's folder in the containers (RAEE_HOME)
EMBEDDED = {"RAEE_QDRANT_URL": "", "RAEE_HOME": STORE_PATH}


@dataclass
class Report:
    """Each check's verdict and time, printed as it ends."""

    results: list[tuple[str, bool, float, str]] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    began: float = field(default_factory=time.monotonic)

    @contextmanager
    def check(self, name: str) -> Iterator[dict[str, str]]:
        note: dict[str, str] = {}
        start = time.monotonic()
        ok = False
        try:
            yield note
            ok = True
        except Exception as error:  # a failed check is reported; the run goes on
            note["detail"] = f"{type(error).__name__}: {error}"
        finally:
            seconds = time.monotonic() - start
            self.results.append((name, ok, seconds, note.get("detail", "")))
            verdict = "PASS" if ok else "FAIL"
            print(
                f"{verdict}  {name}  ({seconds:.1f} s){'  ' + note['detail'] if note.get('detail') else ''}"
            )
            sys.stdout.flush()

    def summary(self) -> bool:
        print(f"\n== e2e-containers summary ({time.monotonic() - self.began:.0f} s in all)")
        for name, value in self.figures.items():
            print(f"  {name}: {value:.1f} s")
        for name, ok, seconds, detail in self.results:
            print(f"  {'PASS' if ok else 'FAIL'}  {name}  ({seconds:.1f} s)  {detail}")
        return all(ok for _, ok, _, _ in self.results)


class Engine:
    """The container engine's command line."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.started: list[str] = []

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args], check=check, capture_output=True, text=True, timeout=timeout
        )

    def start(self, spec: RunSpec) -> float:
        """Start a container; returns the monotonic time just before it was started."""
        self.run("rm", "--force", spec.name, check=False)
        self.started.append(spec.name)
        began = time.monotonic()
        started = self.run(*spec.command(self.binary)[1:], check=False)
        if started.returncode != 0:
            raise RuntimeError(f"{spec.name}: {started.stderr.strip()}")
        return began

    def wait(self, name: str, timeout: float) -> int:
        waited = self.run("wait", name, timeout=timeout)
        return int(waited.stdout.strip().splitlines()[-1])

    def logs(self, name: str, tail: int = 30) -> str:
        out = self.run("logs", "--tail", str(tail), name, check=False)
        return (out.stdout + out.stderr).strip()

    def cleanup(self) -> None:
        for name in reversed(self.started):
            self.run("rm", "--force", "--time", "2", name, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_serving(port: int, service: str, timeout: float, alive: Callable[[], bool]) -> None:
    """Poll gRPC health on 127.0.0.1:port until ``service`` reports SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if not alive():
                raise RuntimeError("the container exited before SERVING")
            time.sleep(0.2)
    raise TimeoutError(f"{service or 'server'} on port {port} not SERVING after {timeout:.0f} s")


def running(engine: Engine, name: str) -> Callable[[], bool]:
    def alive() -> bool:
        state = engine.run("inspect", "--format", "{{.State.Running}}", name, check=False).stdout
        return state.strip() == "true"

    return alive


async def classify_all(
    port: int, task: str, texts: Sequence[str], attempts: int = 5
) -> list[tuple[str, int]]:
    """(label, exit layer) of each text, from the worker on 127.0.0.1:port.

    A degraded answer (the retrieval call missed its deadline, so full depth: the
    first calls on a loaded machine) is asked again, up to ``attempts`` times.
    """
    answers = []
    async with InferenceClient(f"127.0.0.1:{port}") as client:
        for text in texts:
            for _ in range(attempts):
                answer = await client.classify(task, text, "raee", None, None)
                if not answer.degraded:
                    break
            else:
                raise RuntimeError(f"{text!r}: degraded {attempts} times ({answer.degraded_reason})")
            answers.append((answer.label, answer.exit_layer))
    return answers


def host_classify(store: Path, task: str, texts: Sequence[str]) -> list[tuple[str, int]]:
    """``raee up`` + ``raee classify`` from the host's environment, in a private network namespace.

    The namespace keeps the host pair's ports off every interface; the pair reads the same store.
    """
    raee = str(Path(sys.executable).parent / "raee")
    script = (
        "set -e; ip link set lo up; "
        f'"{raee}" up --home "$1" --retrieval-port 50051 --inference-port 50052 > "$2" 2>&1 & up=$!; '
        "shift 2; task=$1; shift; "
        f'classify() {{ "{raee}" classify --json --addr 127.0.0.1:50052 --task "$task" "$@" > "$OUT"; }}; '
        "for i in $(seq 600); do "
        '  if classify "$@" 2> /dev/null; then break; fi; '
        "  kill -0 $up || exit 3; sleep 0.5; "
        "done; "
        # As in the containers' case: degraded answers (a missed retrieval deadline) are asked again.
        'for i in 1 2 3 4 5; do grep -q \'"degraded": true\' "$OUT" || break; classify "$@"; done; '
        "kill -TERM $up; wait $up || true; "
        'if grep -q \'"degraded": true\' "$OUT"; then exit 5; fi'
    )
    with tempfile.TemporaryDirectory() as scratch:
        out, log = Path(scratch, "answers.jsonl"), Path(scratch, "up.log")
        # No collector runs here: with the OTLP exporter, retries would bury the pair's own log.
        env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT), "OTEL_TRACES_EXPORTER": "none"}
        done = subprocess.run(
            ["unshare", "--net", "bash", "-c", script, "host", str(store), str(log), task, *texts],
            env=env,
            check=False,
            timeout=900,
        )
        if done.returncode != 0:
            raise RuntimeError(f"host raee up/classify exited {done.returncode}: {log.read_text()[-2000:]}")
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    return [(row["label"], int(row.get("exit_layer", 0))) for row in rows]


@dataclass
class LoadResult:
    in_flight_at_signal: int = 0
    in_flight_failed: list[str] = field(default_factory=list)
    answered: int = 0
    refused_after: int = 0


Call = Callable[[int], Awaitable[object]]


async def sigterm_under_load(
    engine: Engine,
    name: str,
    connect: Callable[[], tuple[Call, Callable[[], Awaitable[None]]]],
    grace_s: float,
) -> tuple[LoadResult, int]:
    """16 clients call in a loop; SIGTERM once each has had 2 answers; every call started before must end OK.

    ``connect`` runs inside the event loop and gives the call (by client index) and a closer.
    """
    call, close = connect()
    result = LoadResult()
    signalled: list[float] = []
    stop = asyncio.Event()
    warmed = [0] * LOAD_CLIENTS
    active = [0]

    async def client(index: int) -> None:
        while not stop.is_set():
            began = time.monotonic()
            active[0] += 1
            try:
                await call(index)
                result.answered += 1
                warmed[index] += 1
            except grpc.aio.AioRpcError as error:
                if signalled and began < signalled[0]:
                    result.in_flight_failed.append(f"{error.code().name}: {error.details()}")
                else:
                    result.refused_after += 1
                if signalled:
                    return
                await asyncio.sleep(0.05)
            finally:
                active[0] -= 1

    async def signal() -> int:
        while min(warmed) < 2:
            await asyncio.sleep(0.05)
        signalled.append(time.monotonic())
        result.in_flight_at_signal = active[0]
        await asyncio.to_thread(engine.run, "kill", "--signal", "TERM", name)
        code = await asyncio.to_thread(engine.wait, name, grace_s + 30)
        stop.set()
        return code

    try:
        tasks = [asyncio.create_task(client(i)) for i in range(LOAD_CLIENTS)]
        code = await signal()
        await asyncio.gather(*tasks)
    finally:
        await close()
    return result, code


class Run:
    """One e2e run: the folders, the manifests, the containers."""

    def __init__(self, engine: Engine, image: str, baked_image: str, work: Path) -> None:
        self.engine, self.image, self.baked_image, self.work = engine, image, baked_image, work
        self.report = Report()
        self.base = render(ROOT / "k8s" / "base")
        self.baked = render(ROOT / "k8s" / "overlays" / "prod-baked")
        self.ingest_job = render(ROOT / "k8s" / "ingest" / "task")
        self.maps = config_maps(self.base)
        self.cores = os.cpu_count() or 1
        self.store = self._folder("store")
        self.ports = {name: free_port() for name in ("retrieval", "inference", "inference-baked")}

    def _folder(self, name: str) -> Path:
        """A host folder the containers' user owns (the pods' fsGroup)."""
        folder = self.work / name
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, UID, UID)
        return folder

    def _spec(self, docs: list[Manifest], kind: str, workload: str, item: str, **kwargs: object) -> RunSpec:
        return RunSpec(
            spec=pod_spec(docs, kind, workload),
            container=item,
            maps=self.maps,
            network=NETWORK,
            cpu_cap=self.cores,
            **kwargs,  # type: ignore[arg-type]
        )

    def ingest(self, task_dir: Path, name: str) -> None:
        """``raee ingest`` as the ingest CronJob runs it, its cache shared with the inference pod's."""
        data = self.work / "ingest-data" / name
        data.mkdir(parents=True, exist_ok=True)
        shutil.copy(task_dir / "train.jsonl", data / "train.jsonl")
        spec_dir = self.work / "ingest-spec" / name
        spec_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(task_dir / "task.yaml", spec_dir / "task.yaml")
        for path in (data, data / "train.jsonl", spec_dir, spec_dir / "task.yaml"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        spec = self._spec(
            self.ingest_job,
            "CronJob",
            "raee-ingest",
            "ingest",
            name=f"raee-e2e-ingest-{name}",
            image=self.image,
            env={**EMBEDDED, "TASK": name},
            volumes={"task": spec_dir, "data": data.parent, "cache": self._folder("cache-inference")},
            extra_mounts={STORE_PATH: self.store},
        )
        self.engine.start(spec)
        code = self.engine.wait(spec.name, 900)
        if code != 0:
            raise RuntimeError(f"ingest exited {code}: {self.engine.logs(spec.name)}")

    def start_retrieval(self, image: str, docs: list[Manifest], name: str, port: int) -> float:
        spec = self._spec(
            docs,
            "Deployment",
            "raee-retrieval",
            "retrieval",
            name=name,
            image=image,
            aliases=["raee-retrieval"],
            env=EMBEDDED,
            volumes={"cache": self._folder("cache-retrieval")} if docs is self.base else {},
            extra_mounts={STORE_PATH: self.store},
            publish={50051: port},
        )
        return self.engine.start(spec)

    def start_inference(self, image: str, docs: list[Manifest], name: str, port: int) -> float:
        spec = self._spec(
            docs,
            "Deployment",
            "raee-inference",
            "inference",
            name=name,
            image=image,
            volumes={"cache": self._folder("cache-inference")} if docs is self.base else {},
            publish={50052: port},
        )
        return self.engine.start(spec)

    def serving(self, name: str, began: float, port: int, docs: list[Manifest], workload: str) -> float:
        """Seconds from ``began`` to SERVING of the service the readiness probe asks for."""
        spec = pod_spec(docs, "Deployment", workload)
        service = str(spec["containers"][0]["readinessProbe"]["grpc"].get("service", ""))
        try:
            wait_serving(port, service, 600, running(self.engine, name))
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{name}: {error}; its log ends:\n{self.engine.logs(name, 15)}") from None
        return time.monotonic() - began

    def run(self) -> bool:
        report, engine = self.report, self.engine
        engine.run("network", "rm", "--force", NETWORK, check=False)
        engine.run("network", "create", NETWORK)
        demo = [json.loads(line)["text"] for line in (DEMO / "test.jsonl").read_text().splitlines()]
        try:
            with report.check("prepare (init container) converts the backbone into the cache volume"):
                spec = self._spec(
                    self.base,
                    "Deployment",
                    "raee-inference",
                    "prepare",
                    name="raee-e2e-prepare",
                    image=self.image,
                    volumes={"cache": self._folder("cache-inference")},
                )
                began = engine.start(spec)
                code = engine.wait(spec.name, 900)
                report.figures["prepare (init container)"] = time.monotonic() - began
                if code != 0:
                    raise RuntimeError(f"exited {code}: {engine.logs(spec.name)}")

            with report.check("demo task ingested by `raee ingest` in its own container"):
                self.ingest(DEMO, "demo")

            with report.check("retrieval: gRPC health SERVING"):
                began = self.start_retrieval(
                    self.image, self.base, "raee-e2e-retrieval", self.ports["retrieval"]
                )
                seconds = self.serving(
                    "raee-e2e-retrieval", began, self.ports["retrieval"], self.base, "raee-retrieval"
                )
                report.figures["retrieval start -> SERVING"] = seconds
            with report.check("inference: gRPC health SERVING"):
                began = self.start_inference(
                    self.image, self.base, "raee-e2e-inference", self.ports["inference"]
                )
                seconds = self.serving(
                    "raee-e2e-inference", began, self.ports["inference"], self.base, "raee-inference"
                )
                report.figures["inference start -> SERVING"] = seconds

            answers: list[tuple[str, int]] = []
            with report.check("demo classified over gRPC from the host") as note:
                answers = asyncio.run(classify_all(self.ports["inference"], "demo-sentiment", demo))
                note["detail"] = " ".join(f"{label}@{layer}" for label, layer in answers)
            with report.check("answers equal `raee classify` outside containers (same store)") as note:
                expected = host_classify(self.store, "demo-sentiment", demo)
                if expected != answers:
                    raise AssertionError(f"containers {answers} != host {expected}")
                note["detail"] = f"{len(expected)} texts, labels and exit layers equal"

            with report.check("second task ingested while serving is answered with no restart") as note:
                second = self._second_task()
                self.ingest(second, "second")
                began = time.monotonic()
                labels = self._poll_task("demo-second", demo[:2], timeout=120)
                note["detail"] = f"answered {time.monotonic() - began:.1f} s after its ingest ended: {labels}"

            grace = float(
                next(
                    e["value"]
                    for e in pod_spec(self.base, "Deployment", "raee-inference")["containers"][0]["env"]
                    if e["name"] == "RAEE_GRACE_S"
                )
            )
            with report.check(
                "SIGTERM to inference under 16-client load: in-flight answered, exit 0"
            ) as note:
                load, code = asyncio.run(
                    sigterm_under_load(engine, "raee-e2e-inference", self._inference_load(demo), grace)
                )
                note["detail"] = self._verdict(load, code)
            with report.check(
                "SIGTERM to retrieval under 16-client load: in-flight answered, exit 0"
            ) as note:
                load, code = asyncio.run(
                    sigterm_under_load(engine, "raee-e2e-retrieval", self._retrieval_load(demo), grace)
                )
                note["detail"] = self._verdict(load, code)

            self._baked_check(demo)
        finally:
            engine.cleanup()
            engine.run("network", "rm", "--force", NETWORK, check=False)
        return report.summary()

    def _inference_load(
        self, demo: Sequence[str]
    ) -> Callable[[], tuple[Call, Callable[[], Awaitable[None]]]]:
        """16 clients of the inference worker, each on its own channel."""
        address = f"127.0.0.1:{self.ports['inference']}"

        def connect() -> tuple[Call, Callable[[], Awaitable[None]]]:
            clients = [InferenceClient(address) for _ in range(LOAD_CLIENTS)]

            async def call(index: int) -> object:
                return await clients[index].classify(
                    "demo-sentiment", demo[index % len(demo)], "raee", None, None
                )

            async def close() -> None:
                for client in clients:
                    await client.close()

            return call, close

        return connect

    def _retrieval_load(
        self, demo: Sequence[str]
    ) -> Callable[[], tuple[Call, Callable[[], Awaitable[None]]]]:
        """16 clients of the retrieval service (the worker is gone by then), each on its own channel."""
        address = f"127.0.0.1:{self.ports['retrieval']}"

        def connect() -> tuple[Call, Callable[[], Awaitable[None]]]:
            channels = [grpc.aio.insecure_channel(address) for _ in range(LOAD_CLIENTS)]
            stubs = [retrieval_pb2_grpc.RetrievalServiceStub(channel) for channel in channels]

            async def call(index: int) -> object:
                request = retrieval_pb2.ExitDistributionRequest(
                    task="demo-sentiment", text=demo[index % len(demo)]
                )
                return await stubs[index].GetExitDistribution(request, timeout=30)

            async def close() -> None:
                for channel in channels:
                    await channel.close()

            return call, close

        return connect

    @staticmethod
    def _verdict(load: LoadResult, code: int) -> str:
        if load.in_flight_failed or code != 0:
            raise AssertionError(f"exit {code}; in-flight calls failed: {load.in_flight_failed[:3]}")
        return (
            f"{load.in_flight_at_signal} in flight at SIGTERM, all answered; {load.answered} answers in all, "
            f"{load.refused_after} calls refused after SIGTERM; exit 0"
        )

    def _second_task(self) -> Path:
        folder = self.work / "second-task"
        folder.mkdir(exist_ok=True)
        spec = (DEMO / "task.yaml").read_text().replace("name: demo-sentiment", "name: demo-second")
        (folder / "task.yaml").write_text(spec)
        shutil.copy(DEMO / "train.jsonl", folder / "train.jsonl")
        return folder

    def _poll_task(self, task: str, texts: Sequence[str], timeout: float) -> list[tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return asyncio.run(classify_all(self.ports["inference"], task, texts))
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _baked_check(self, demo: Sequence[str]) -> None:
        """prod-baked: no init container, no cache volume, RAEE_CACHE_DIR=/opt/raee/cache read-only."""
        report, engine = self.report, self.engine
        truncated = f"{self.baked_image}-mtime-s"
        with report.check("baked image: cache mtimes truncated to whole seconds") as note:
            self._truncate_mtimes(truncated)
            out = engine.run(
                "run",
                "--rm",
                "--entrypoint",
                "sh",
                truncated,
                "-c",
                "find /opt/raee/cache -type f -exec stat -c %y {} + | grep -vc '\\.000000000 ' || true",
            ).stdout.strip()
            if out != "0":
                raise AssertionError(f"{out} files keep sub-second mtimes")
            note["detail"] = "every file under /opt/raee/cache at .000000000 s"
        with report.check("baked image serves with its cache read-only") as note:
            began = self.start_retrieval(
                truncated, self.baked, "raee-e2e-retrieval-baked", self.ports["retrieval"]
            )
            report.figures["baked retrieval start -> SERVING"] = self.serving(
                "raee-e2e-retrieval-baked", began, self.ports["retrieval"], self.baked, "raee-retrieval"
            )
            port = self.ports["inference-baked"]
            began = self.start_inference(truncated, self.baked, "raee-e2e-inference-baked", port)
            seconds = self.serving("raee-e2e-inference-baked", began, port, self.baked, "raee-inference")
            report.figures["baked inference start -> SERVING"] = seconds
            answers = asyncio.run(classify_all(port, "demo-sentiment", demo[:2]))
            writable = engine.run(
                "exec", "raee-e2e-inference-baked", "sh", "-c", "touch /opt/raee/cache/x 2>&1 || true"
            ).stdout
            if "Read-only" not in writable:
                raise AssertionError(f"the cache is writable: {writable!r}")
            note["detail"] = f"SERVING in {seconds:.1f} s, answered {answers}, cache read-only"
        engine.run("rmi", "--force", truncated, check=False)  # 1.3 GB of copied-up cache

    def _truncate_mtimes(self, tag: str) -> None:
        """An image whose cache files have whole-second mtimes, as a registry round trip leaves them."""
        context = self.work / "truncate"
        context.mkdir(exist_ok=True)
        (context / "Containerfile").write_text(
            f"FROM {self.baked_image}\nUSER 0\n"
            'RUN find /opt/raee/cache -exec sh -c \'touch -h -m -d "@$(stat -c %Y "$1")" "$1"\' _ {} \\;\n'
            f"USER {UID}:{UID}\n"
        )
        self.engine.run("build", "--quiet", "-t", tag, str(context), timeout=900)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", default="podman")
    parser.add_argument("--image", default="localhost/raee:dev")
    parser.add_argument("--baked-image", default=None, help="(IMAGE-baked)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    engine = Engine(args.engine)
    work = Path(tempfile.mkdtemp(prefix="raee-e2e-", dir="/var/tmp"))
    work.chmod(0o755)
    print(f"e2e-containers: {args.engine}, image {args.image}, work folder {work}")
    try:
        ok = Run(engine, args.image, args.baked_image or f"{args.image}-baked", work).run()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
