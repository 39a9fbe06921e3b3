-- Tries every way to load a binary chunk; none may work.
function handle(req)
    local chunk = "\27LuaT\0\25\147\r\n\26\n\4\8\8xV\0\0\0\0\0\0\0\0\0\0\0(w@\1"
    local out = {}
    local f, err = load(chunk)
    out[#out + 1] = tostring(f) .. " " .. tostring(err)
    f, err = load(chunk, "x", "b")
    out[#out + 1] = tostring(f) .. " " .. tostring(err)
    f, err = load(function() local c = chunk; chunk = nil; return c end, "x", "bt")
    out[#out + 1] = tostring(f) .. " " .. tostring(err)
    out[#out + 1] = "dump=" .. tostring(string.dump)
    return table.concat(out, "\n") .. "\n"
end
