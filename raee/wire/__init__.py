"""The only code that converts between domain objects and the ``raee.v1`` protos.

One module per API: ``common`` (task infos, per-item errors), ``retrieval``
(exit-distribution queries and answers, and the typed client the worker uses),
``inference`` (classify requests and answers). Enums are mapped explicitly, so an
unknown wire value is refused by name instead of cast through. ``validate`` holds
the request checks both servicers share.
"""
