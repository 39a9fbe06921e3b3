-- The smallest tenant: the bench compares it with the server's native GET /.
function handle(req)
    return "hello, world\n"
end
