# The demo's worker: calls the api every few seconds and logs the answer
# (see `orch service logs demo_worker`).
while true; do
  printf 'GET /work HTTP/1.0\r\n\r\n' | busybox nc -w 2 api 9000 | busybox tail -n 1
  busybox sleep "${INTERVAL:-5}"
done
