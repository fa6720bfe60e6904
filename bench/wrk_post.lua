-- wrk script: POST one JSON body, count the requests sent, print the figures as JSON.
--
--   wrk -t1 -c20 -d10s -s bench/wrk_post.lua http://127.0.0.1:8080/v1/chat/completions \
--       -- body.json "Bearer sk-ledger-..."
--
-- The last line of the output is one JSON object: requests completed, requests sent
-- (completed plus those still in flight when wrk stopped), errors, and latency
-- percentiles in microseconds.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(args[1], "rb"))
   local body = file:read("*a")
   file:close()
   local headers = { ["Content-Type"] = "application/json" }
   if args[2] and args[2] ~= "" then
      headers["Authorization"] = args[2]
   end
   -- A body holding "%%N%%" gets the request's number there, so that no two prompts are
   -- the same (nothing on the path can answer from a cache of what it counted before).
   numbered = body:find("%%N%%", 1, true) ~= nil
   template = body
   request_headers = headers
   prepared = wrk.format("POST", nil, headers, body)
   sent = 0
   bad = 0
end

function request()
   sent = sent + 1
   if numbered then
      local numbered_body = template:gsub("%%%%N%%%%", tostring(sent))
      return wrk.format("POST", nil, request_headers, numbered_body)
   end
   return prepared
end

function response(status, headers, body)
   if status ~= 200 then
      bad = bad + 1
   end
end

function done(summary, latency, requests)
   local sent_total, bad_total = 0, 0
   for _, thread in ipairs(threads) do
      sent_total = sent_total + thread:get("sent")
      bad_total = bad_total + thread:get("bad")
   end
   local e = summary.errors
   io.write(string.format(
      '{"requests": %d, "sent": %d, "non_200": %d, "duration_us": %d, "connect_errors": %d, ' ..
      '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
      '"mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
      summary.requests, sent_total, bad_total, summary.duration, e.connect, e.read, e.write,
      e.status, e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), latency.max))
end
