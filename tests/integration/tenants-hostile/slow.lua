-- Spins with a per-tenant limit of 20 ms (slow.conf): 504 within 40 ms.
function handle(req)
    while true do end
end
