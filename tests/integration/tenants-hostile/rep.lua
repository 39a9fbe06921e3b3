-- A string.rep bomb: 2 GB asked of one C function (503).
function handle(req)
    return string.rep(string.rep("x", 1000000), 2000)
end
