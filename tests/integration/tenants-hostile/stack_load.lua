-- The same at load time: top-level code that closes a chain of coroutines
-- from __close handlers, each inside 150 levels of pcall (see stack.lua).
-- Refused ("stack limit exceeded (top-level)"): never served, 404.
local cos = {}

local function deep(d, i)
    if d == 0 then
        if cos[i + 1] then coroutine.close(cos[i + 1]) end
    else
        pcall(deep, d - 1, i)
    end
end

for i = 1, 400 do
    cos[i] = coroutine.create(function()
        local x <close> = setmetatable({}, {__close = function() deep(150, i) end})
        coroutine.yield()
    end)
    coroutine.resume(cos[i])
end
coroutine.close(cos[1])

function handle(req)
    return "loaded\n"
end
