#!/bin/bash
# Runner heartbeat: free disk and load, for the coordinator.
set -u
avail=$(df -P $B | awk 'NR == 2 {print $4}')
load=$(cut -d' ' -f1 /proc/loadavg)
echo "$EVAL_HOST avail=$avail load=$load" > $B/state/heartbeat
