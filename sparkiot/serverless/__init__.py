"""The serverless control plane: pipelines submitted over HTTP run on demand, scale, stop when idle,
and are billed with real cloud prices.

* :mod:`~sparkiot.serverless.control`: the supervisor (ingest and Spark runtime per pipeline);
* :mod:`~sparkiot.serverless.runner`: the Spark driver process of one runtime epoch;
* :mod:`~sparkiot.serverless.cluster`: a standalone cluster on 127.0.0.1;
* :mod:`~sparkiot.serverless.scaling`: the policy interface and the target-tracking default;
* :mod:`~sparkiot.serverless.metering` and ``prices.yaml``: the bill;
* :mod:`~sparkiot.serverless.registry`: SQLite or PostgreSQL state;
* :mod:`~sparkiot.serverless.api` and :mod:`~sparkiot.serverless.client`: HTTP.
"""
