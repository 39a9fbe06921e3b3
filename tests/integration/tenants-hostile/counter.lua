-- Leaves traces everywhere it can; a fresh sandbox must show none of them:
-- every request answers "1 1 1 1 nil".
count = 0
local up = 0
local smt = getmetatable("")
function handle(req)
    count = count + 1
    up = up + 1
    smt.__index.mark = (smt.__index.mark or 0) + 1
    string.mark2 = (string.mark2 or 0) + 1
    local seen = rawget(_G, "left_behind")
    left_behind = true
    return string.format("%d %d %d %d %s %.17g\n", count, up, ("").mark, string.mark2,
        tostring(seen), math.random())
end
