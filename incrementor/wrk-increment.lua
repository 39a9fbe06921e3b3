-- wrk script: POST /increment over 10,000 random keys, values -10000..10000
-- (the reference design's "insane mode"). Usage:
--   wrk -t1 -c64 -d8s -s incrementor/wrk-increment.lua http://127.0.0.1:3333/increment
-- The requests are formatted once, in init (64k of them, random keys and
-- values, cycled): formatting one per request in Lua costs wrk more CPU than
-- the server spends answering it, and the client would be what is measured.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

local reqs, n, i = {}, 65536, 0

function init(args)
    math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
    for k = 1, n do
        local body = string.format("key=k%d&value=%d", math.random(0, 9999),
                                   math.random(-10000, 10000))
        reqs[k] = wrk.format(nil, nil, nil, body)
    end
end

function request()
    i = i % n + 1
    return reqs[i]
end

function done(summary, latency, requests)
    io.write(string.format("non-2xx: %d\n", summary.errors.status))
end
