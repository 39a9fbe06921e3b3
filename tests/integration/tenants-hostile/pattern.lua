-- Exponential backtracking inside string.find (C code, no hook fires there):
-- only the time limit's jump stops it (504).
function handle(req)
    local s = string.rep("a", 60)
    return tostring(string.find(s, string.rep("a*", 60) .. "b"))
end
