-- Raises an error object whose __tostring never ends (500, at once).
function handle(req)
    error(setmetatable({}, {__tostring = function() while true do end end}))
end
