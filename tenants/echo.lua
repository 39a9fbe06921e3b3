-- Echoes what the sandbox tells a tenant about its request, as JSON-ish text.
local function q(s)
    return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function handle(req)
    local names = {}
    for name in pairs(req.headers) do names[#names + 1] = name end
    table.sort(names)
    local hs = {}
    for _, name in ipairs(names) do hs[#hs + 1] = q(name) .. ": " .. q(req.headers[name]) end
    local body = string.format('{"method": %s, "path": %s, "query": %s, "body": %s, "headers": {%s}}\n',
        q(req.method), q(req.path), q(req.query), q(req.body), table.concat(hs, ", "))
    return 200, body, "application/json"
end
