-- Finalizers that never end: Lua runs them with hooks off, during a
-- collection, so only the time limit's jump stops them (504).
local mt = {__gc = function() while true do end end}
function handle(req)
    for i = 1, 1e7 do setmetatable({}, mt) end
    return "unreachable\n"
end
