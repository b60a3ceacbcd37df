-- wrk script for benches/load/memory: every request comes from a new client address.
--
--   wrk ... -s addresses.lua URL -- COUNT PATH METHOD
--
-- Request k (k = 0 .. COUNT-1) carries "X-Forwarded-For: 10.a.b.c" with a.b.c = k in
-- base 256 (16.7 M addresses at most), so COUNT requests come from COUNT distinct
-- addresses. The thread stops after COUNT responses. Status codes are counted; done()
-- prints the same WRKRESULT line as requests.lua.

counts = {}
responses = 0
local threads = {}
local k = -1
local count, path, method

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    count = tonumber(args[1]) or error("addresses.lua: give COUNT after --")
    path = args[2] or "/login"
    method = args[3] or "POST"
    if count > 16777216 then
        error("addresses.lua: at most 16777216 addresses")
    end
end

function request()
    -- Requests beyond COUNT (up to one per connection, in flight when the thread stops)
    -- go on with new addresses (or, past the 16.7 M, wrap to the first ones: a second
    -- request at most). They once all reused the last address, which then passed the
    -- default pack's 30 logins per address when more than 30 were in flight.
    k = k + 1
    local a = k % 16777216
    local addr = string.format("10.%d.%d.%d", math.floor(a / 65536) % 256,
        math.floor(a / 256) % 256, a % 256)
    return wrk.format(method, path, {
        ["Host"] = "bench.local",
        ["X-Forwarded-For"] = addr,
        ["Content-Type"] = "application/json",
    }, "{}")
end

function response(status, headers, body)
    counts[status] = (counts[status] or 0) + 1
    responses = responses + 1
    if responses >= count then
        wrk.thread:stop()
        -- wrk's main thread sleeps for the whole -d duration unless SIGINT ends it. The
        -- shell os.execute starts is wrk's child ($PPID is wrk); the kill runs in the
        -- background because system() ignores SIGINT in wrk until the shell exits.
        os.execute("(sleep 0.2; kill -INT $PPID) &")
    end
end

function done(summary, latency, requests)
    local total = {}
    for _, t in ipairs(threads) do
        for code, n in pairs(t:get("counts")) do
            total[code] = (total[code] or 0) + n
        end
    end
    local parts = {}
    for code, n in pairs(total) do
        table.insert(parts, string.format("%d:%d", code, n))
    end
    table.sort(parts)
    local e = summary.errors
    io.write(string.format(
        "WRKRESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d connect=%d read=%d write=%d timeout=%d status=%s\n",
        summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max,
        e.connect, e.read, e.write, e.timeout, table.concat(parts, ",")))
end
