#!/bin/bash
# Settled memory of a daemon started on a store kept by the routing bench.
#
#   ROUTING_BENCH_KEEP=/tmp/rb cargo bench --bench routing
#   scripts/daemon-memory.sh /tmp/rb target/release/switchboard [gdb] [notrim]
#
# Starts BINARY on a fresh copy of DIR/bench.sqlite.orig with DIR's config,
# waits for "switchboard started", polls /proc until VmRSS holds still for
# 2 s, prints VmHWM/VmRSS/RssAnon/RssFile, and stops the daemon.
#   gdb     also prints glibc's malloc_stats() and the RSS after a
#           malloc_trim(0), both called through gdb (to stats.txt in DIR)
#   notrim  runs with an LD_PRELOADed no-op malloc_trim (needs cc)
# Environment overrides (SWITCHBOARD__STORE__CACHE_KIB=…) pass through.
set -eu
DIR=$1 BIN=$2
shift 2
GDB=0 PRELOAD=
for opt in "$@"; do
  case $opt in
    gdb) GDB=1 ;;
    notrim)
      printf '#include <stddef.h>\nint malloc_trim(size_t pad){(void)pad;return 0;}\n' > "$DIR/notrim.c"
      cc -shared -fPIC -o "$DIR/notrim.so" "$DIR/notrim.c"
      PRELOAD=$DIR/notrim.so ;;
    *) echo "unknown option $opt" >&2; exit 2 ;;
  esac
done
cp "$DIR/bench.sqlite.orig" "$DIR/bench.sqlite"
rm -f "$DIR/bench.sqlite-wal" "$DIR/bench.sqlite-shm"
LOG=$DIR/daemon.log
RUST_LOG=info LD_PRELOAD=$PRELOAD "$BIN" --log-format json run --config "$DIR/switchboard.toml" 2> "$LOG" > /dev/null &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do grep -q "switchboard started" "$LOG" && break; sleep 0.5; done
last=0 stable=0
for _ in $(seq 1 240); do
  sleep 0.5
  rss=$(awk '/^VmRSS/{print $2}' /proc/$PID/status)
  d=$((rss - last)); d=${d#-}
  if [ "$d" -lt 256 ]; then stable=$((stable + 1)); else stable=0; fi
  last=$rss
  [ "$stable" -ge 4 ] && break
done
grep -E "^(VmHWM|VmRSS|RssAnon|RssFile)" /proc/$PID/status | tr -s ' \t' ' ' | tr '\n' ' '; echo
if [ "$GDB" = 1 ]; then
  lines=$(wc -l < "$LOG")
  gdb -p $PID -batch -ex 'call (void)malloc_stats()' > /dev/null 2>&1
  sleep 0.5
  tail -n +$((lines + 1)) "$LOG" | grep -v '^{' > "$DIR/stats.txt" || true
  gdb -p $PID -batch -ex 'call (int)malloc_trim(0)' > /dev/null 2>&1
  sleep 1
  echo -n "after malloc_trim(0): "
  grep -E "^(VmRSS|RssAnon)" /proc/$PID/status | tr -s ' \t' ' ' | tr '\n' ' '; echo
fi
kill $PID
wait $PID || true
