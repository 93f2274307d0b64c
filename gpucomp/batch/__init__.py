"""Many renders: a JOBS.jsonl file run on one warm engine in this process, or
on Ray actors over the GPUs of a machine or a cluster.

    jobs.py        the JOBS file: one render per line, all checked before any runs
    worker.py      warm engines and resident avatars (least recently used out)
    runner.py      the in-process runner, progress over all jobs, the report
    ray_runner.py  Ray: one actor per GPU, jobs to the actor holding their avatar, retries
"""
