#!/usr/bin/env bash
# The README's test command. Full suite on one PostgreSQL, the conversion and lifecycle suites on the others.
set -uo pipefail
cd "$(dirname "$0")/.."
primary=18
if [ -x /usr/lib/postgresql/15/bin/postgres ]; then primary=15; fi
status=0
echo "== full suite on PostgreSQL ${primary} =="
PARTMAN_TEST_PG=$primary python -m pytest -q "$@" || status=$?
for v in 18 16; do
  [ "$v" = "$primary" ] && continue
  echo "== conversion and lifecycle suites on PostgreSQL ${v} =="
  PARTMAN_TEST_PG=$v python -m pytest -q -m "conversion or lifecycle" "$@" || { rc=$?; [ $rc -eq 5 ] || status=$rc; }
done
exit $status
