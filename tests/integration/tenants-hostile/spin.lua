-- An endless loop: the count hook stops it (504).
function handle(req)
    while true do end
end
