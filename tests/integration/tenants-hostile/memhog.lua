-- Eats memory, catches the error, and tries again, forever (503).
function handle(req)
    local keep = {}
    while true do
        pcall(function()
            for i = 1, 1e9 do keep[#keep + 1] = string.rep("x", 10000) .. i end
        end)
    end
end
