# The demo's back end: counts the requests it served and shows the first
# characters of the secret's digest (the secret itself is never printed).
read -r method path _
while read -r line; do
  line=$(printf '%s' "$line" | busybox tr -d '\r')
  [ -z "$line" ] && break
done
if [ "$path" = /health ]; then
  printf 'HTTP/1.0 200 OK\r\n\r\nOK\n'
  exit 0
fi
n=$(busybox cat /tmp/count 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > /tmp/count
token=$(busybox sha256sum /run/secrets/api_token | busybox cut -c1-8)
greeting=$(busybox cat /etc/demo/greeting)
body="api $(busybox hostname): $greeting (request $n for $path, token sha256 $token...)"
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n%s\n' "$body"
