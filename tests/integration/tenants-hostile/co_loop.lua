-- An endless loop inside a coroutine (504).
function handle(req)
    local co = coroutine.wrap(function() while true do end end)
    co()
end
