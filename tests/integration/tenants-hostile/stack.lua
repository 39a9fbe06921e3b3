-- Nested C calls that Lua 5.4.4 does not bound: GET /t/stack/<shape> (503,
-- "stack limit exceeded"; the server died of it before tenants ran on a
-- stack of their own). 400 coroutines are resumed and left suspended, each
-- with a __close handler that nests one shape of C recursion, within Lua's
-- own count of C calls, then closes the next coroutine: that one's handler
-- runs on its own count, which starts low again (fixed upstream in 5.4.6).
local cos, nest = {}, nil

local function close_next(i)
    if cos[i + 1] then coroutine.close(cos[i + 1]) end
end

local index_mt = {__index = function(t, k) return nest(t.d - 1, t.i) end}

-- Each: nest(d, i) goes d levels deep (d: C calls under Lua's 200).
local shapes = {
    pcall = {150, function(d, i)
        if d == 0 then return close_next(i) end
        pcall(nest, d - 1, i)
    end},
    -- coroutine.wrap's error path closes the dead coroutine's variables
    wrap = {50, function(d, i)
        if d == 0 then return close_next(i) end
        pcall(coroutine.wrap(function()
            local x <close> = setmetatable({}, {__close = function() nest(d - 1, i) end})
            error("e")
        end))
    end},
    gsub = {150, function(d, i)
        if d == 0 then return close_next(i) end
        string.gsub("x", ".", function() nest(d - 1, i) end)
    end},
    sort = {150, function(d, i)
        if d == 0 then return close_next(i) end
        local once = true
        table.sort({3, 1, 2}, function(a, b)
            if once then once = false nest(d - 1, i) end
            return a < b
        end)
    end},
    close = {150, function(d, i)
        if d == 0 then return close_next(i) end
        local x <close> = setmetatable({}, {__close = function() nest(d - 1, i) end})
    end},
    index = {150, function(d, i)
        if d == 0 then return close_next(i) end
        return setmetatable({d = d, i = i}, index_mt).x
    end},
}

function handle(req)
    local shape = shapes[req.path:sub(2)]
    if not shape then return 404, "no such shape\n" end
    local depth
    depth, nest = shape[1], shape[2]
    for i = 1, 400 do
        cos[i] = coroutine.create(function()
            local x <close> = setmetatable({}, {__close = function() nest(depth, i) end})
            coroutine.yield()
        end)
        coroutine.resume(cos[i])
    end
    coroutine.close(cos[1])
    return "survived\n"
end
