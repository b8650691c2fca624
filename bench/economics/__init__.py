"""Routing economics on the Azure 2023 conversation trace: the evidence for docs/ECONOMICS.md.

    python -m bench.economics                        # every section, 100,000 requests per run
    python -m bench.economics --requests 20000 --section hybrid --section advisor
    python -m bench.economics --parallel 2           # independent runs as Ray tasks (--address for a cluster)
    python -m bench.economics --doc-only             # rebuild the doc from bench/results/economics.json

Every run replays the same requests: lengths resampled from the trace's rows,
Poisson arrivals, difficulties from the default reach table (simulator/quality.py),
all from one seed. Modules: `common` (running, sizing, formatting), one module
per section (`registry.SECTIONS` lists them in document order), `doc` (the
writer), `cli` (the command line).
"""
