#!/usr/bin/env bash
# Gradescope autograder image setup (runs once, as root, when the autograder is built).
# Upload a zip of the course repository (with tests_hidden/) plus this folder's two files at
# its top level; Gradescope unpacks it into /autograder/source.
set -euo pipefail
apt-get update -qq
apt-get install -y -qq python3 python3-venv python3-pip bubblewrap   # bubblewrap: sandbox
cd /autograder/source
python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt
