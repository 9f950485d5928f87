#!/bin/bash
# The matrix of docs/scaling.md: wxpush-bench (BIN, default target/release/wxpush-bench)
# with 1, 2 and 4 workers on single, cluster and sentinel Redis (replicas_ack 1 and 0)
# and on the loopback RabbitMQ cluster with quorum queues. Needs: eval "$(scripts/clusters.sh start)".
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/wxpush-bench}
CL="[$(echo "$WXPUSH_TEST_REDIS_CLUSTER" | sed 's/[^,]*/"&"/g')]"
SE="[$(echo "$WXPUSH_TEST_REDIS_SENTINEL" | sed 's/[^,]*/"&"/g')]"
AM="[$(echo "$WXPUSH_TEST_AMQP_CLUSTER" | sed 's/[^,]*/"&"/g')]"
run() { # name workers env...
  local name=$1 w=$2; shift 2
  env "$@" timeout 300 "$BIN" --events "${EVENTS:-3000}" --workers "$w" --json ${OUT:-/tmp}/m-$name-$w.json >/dev/null 2>&1
  python3 -c "import json,sys;d=json.load(open('${OUT:-/tmp}/m-$name-$w.json'));print('$name', $w, d['throughput'])" 2>/dev/null || echo "$name $w FAILED"
}
for w in 1 2 4; do
  run single $w
  run cluster-ack1 $w WXPUSH_REDIS__MODE=cluster WXPUSH_REDIS__URLS="$CL"
  run cluster-ack0 $w WXPUSH_REDIS__MODE=cluster WXPUSH_REDIS__URLS="$CL" WXPUSH_REDIS__REPLICAS_ACK=0
  run sentinel-ack1 $w WXPUSH_REDIS__MODE=sentinel WXPUSH_REDIS__URLS="$SE" WXPUSH_REDIS__SENTINEL_MASTER=mymaster
  run sentinel-ack0 $w WXPUSH_REDIS__MODE=sentinel WXPUSH_REDIS__URLS="$SE" WXPUSH_REDIS__SENTINEL_MASTER=mymaster WXPUSH_REDIS__REPLICAS_ACK=0
done
for w in 1 2 4; do
  run rabbit3-quorum $w WXPUSH_AMQP__URLS="$AM" WXPUSH_AMQP__QUEUE_TYPE=quorum
  run single-quorum $w WXPUSH_AMQP__QUEUE_TYPE=quorum
done
