-- wrk script for benches/load/run.
--
--   wrk ... -s requests.lua URL -- DATA_FILE [once]
--
-- DATA_FILE has one request per line: "PATH TOKEN ADDRESS" ("-" for no token). Every
-- request is built once, in init(), and replayed in file order, round robin, so the
-- script costs wrk the same few instructions per request whatever the proxy. Each
-- request carries "Authorization: Bearer TOKEN" and "X-Forwarded-For: ADDRESS".
--
-- response() counts status codes; done() prints one machine-readable line:
--   WRKRESULT requests=N duration_us=N rps=N p50_us=N p90_us=N p99_us=N p999_us=N
--             max_us=N connect=N read=N write=N timeout=N status=CODE:N,CODE:N,...
-- With "once", wrk stops after one pass over the file (warm-up; with several threads,
-- when the first thread has done its pass).

local threads = {}
local counter = 1

function setup(thread)
    thread:set("id", counter)
    counter = counter + 1
    table.insert(threads, thread)
end

-- Per-thread state (globals, so that done() can read them with thread:get).
counts = {}
responses = 0

local reqs = {}
local n = 0
local i = 0
local once = false

function init(args)
    local file = args[1]
    if file == nil then
        error("requests.lua: give the data file after --")
    end
    once = args[2] == "once"
    for line in io.lines(file) do
        local path, token, addr = line:match("^(%S+) (%S+) (%S+)$")
        if path == nil then
            error("requests.lua: bad line in " .. file .. ": " .. line)
        end
        local headers = { ["Host"] = "bench.local", ["X-Forwarded-For"] = addr }
        if token ~= "-" then
            headers["Authorization"] = "Bearer " .. token
        end
        n = n + 1
        reqs[n] = wrk.format("GET", path, headers)
    end
    if n == 0 then
        error("requests.lua: " .. file .. " is empty")
    end
    -- Threads start at different places in the file (one thread is the default).
    i = ((id or 1) - 1) * math.floor(n / 8)
end

function request()
    i = i + 1
    if i > n then
        i = 1
    end
    return reqs[i]
end

function response(status, headers, body)
    counts[status] = (counts[status] or 0) + 1
    responses = responses + 1
    if once and responses >= n then
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
        local c = t:get("counts")
        for code, k in pairs(c) do
            total[code] = (total[code] or 0) + k
        end
    end
    local codes = {}
    for code, _ in pairs(total) do
        table.insert(codes, code)
    end
    table.sort(codes)
    local parts = {}
    for _, code in ipairs(codes) do
        table.insert(parts, string.format("%d:%d", code, total[code]))
    end
    local e = summary.errors
    io.write(string.format(
        "WRKRESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d connect=%d read=%d write=%d timeout=%d status=%s\n",
        summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max,
        e.connect, e.read, e.write, e.timeout, table.concat(parts, ",")))
end
