function handle(req)
    return "hello, world\n"
end
