"""Entry points for scheduled and submitted irscan jobs (``ray job submit``, cron).

Both run a YAML job file (see :mod:`pipeline.jobspec`) through :mod:`pipeline.jobrun`, which
holds the output lock, resumes finished work and writes ``OUTPUT/_runs/<run id>.json``.
``jobs/examples/`` holds example job files; the tests load and plan every one of them.
"""
