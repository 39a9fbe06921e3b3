-- Catches the time limit's error and carries on looping (504 all the same).
function handle(req)
    while true do
        pcall(function() while true do end end)
    end
end
