"""`kiln batch`: bake a folder or a manifest of assets, on this machine or on a Ray cluster.

    inputs    folder discovery and CSV / JSON-lines manifests -> a list of ``Asset``
    resume    which assets can be skipped (output newer than source, same options)
    summary   ``AssetResult`` per asset, ``summary.json`` + ``summary.csv``
    progress  one overall bar (done / total, ETA) + the assets running now
    runner    the job queue the executors pull from (``engine.service.executors``)
    cli       the command line

The assets are baked by the service's executors (``engine.service.executors``):
``local`` = supervised worker processes on this machine (crash isolation), ``ray`` =
one long-lived actor per GPU / CPU slot of a Ray cluster. Both run the same engine
function (the service worker's job runner around ``engine.pipeline.bake``).

The batch driver does no GPU work and never opens a mesh: the executors' workers do.
"""
