# The demo's front end: one HTTP/1.0 exchange per connection (busybox nc -ll
# runs this for each). It asks the back end by its service name ("api",
# resolved by the node's DNS at 127.0.0.11 to the service's virtual IP) and
# answers with what it said.
read -r method path _
while read -r line; do
  line=$(printf '%s' "$line" | busybox tr -d '\r')
  [ -z "$line" ] && break
done
answer=$(printf 'GET %s HTTP/1.0\r\n\r\n' "$path" | busybox nc -w 2 api 9000 | busybox tail -n 1)
[ -n "$answer" ] || answer="(the api did not answer)"
body="front $(busybox hostname) -> $answer"
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %s\r\n\r\n%s\n' "$((${#body} + 1))" "$body"
