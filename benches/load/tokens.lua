-- wrk script for target (e): every request carries the next token of the
-- file named by $TOKENS (one per line), so the verification cache misses.
-- Also reports like report.lua (loaded from this script's directory).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do
  tokens[#tokens + 1] = "Bearer " .. line
end
local n = #tokens
local i = 0
local headers = {}

request = function()
  i = i % n + 1
  headers["Authorization"] = tokens[i]
  return wrk.format("GET", "/", headers)
end
