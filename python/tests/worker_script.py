"""A worker process for the signal and crash tests:
``worker_script.py URL STREAM GROUP NAME OUTFILE SLEEP``. Appends each handled
payload's ``n`` to OUTFILE (flushed at once), prints the report as JSON at exit."""

import dataclasses
import json
import sys
import time

import streambus

url, stream, group, name, outfile, sleep = sys.argv[1:7]
client = streambus.Client.open(url)
out = open(outfile, "a", buffering=1)


def handle(d):
    if float(sleep):
        time.sleep(float(sleep))
    out.write(f"{d.data['n']}\n")


worker = streambus.Worker(client, stream, group, handle, name=name, concurrency=8, batch_size=8,
                          shutdown_grace=10.0)
print("started", flush=True)
report = worker.run()
print(json.dumps(dataclasses.asdict(report)), flush=True)
