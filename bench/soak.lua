-- Rotates GET /hello, POST /echo (64 KiB) and GET /stream (8 x 8 KiB chunks).
local body = string.rep("a", 65536)
local n = 0
request = function()
  n = n + 1
  local kind = n % 3
  if kind == 0 then
    return wrk.format("GET", "/soak/hello")
  elseif kind == 1 then
    return wrk.format("POST", "/soak/echo", {["Content-Type"] = "application/octet-stream"}, body)
  else
    return wrk.format("GET", "/soak/stream")
  end
end
