-- Hands back a body whose __tostring never ends: the sandbox must not call
-- it (500, bad return).
function handle(req)
    return 200, setmetatable({}, {__tostring = function() while true do end end})
end
