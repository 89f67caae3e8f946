-- Argo CD health check for kestrel.dev/v1alpha1 ClassificationTrain, ClassificationPrune, ClassificationExport.
-- One source, deploy/argocd/health.lua; resource_customizations/kestrel.dev/<Kind>/health.lua and
-- argocd-cm-patch.yaml are copies written by scripts/gen_argocd_health.py (tests/operator/test_argocd_health.py
-- fails when they drift). Lua 5.1 as Argo CD runs it from argocd-cm (gopher-lua without useOpenLibs): only the
-- base and table libraries, so no string.* or math.* here. Every field may be missing; no path raises an error.
-- Decision order (the first that matches):
--   1. no status, or status.observedGeneration below metadata.generation -> Progressing "waiting for the operator ..."
--   2. phase Failed, or condition Stalled=True -> Degraded, Stalled's message (else status.message)
--   3. phase Suspended (spec.suspend, or reason Queued: waiting in a Kueue queue) -> Suspended
--   4. phase Pending or Running -> Progressing, status.message + " (epoch 3/10, 30%, ETA 4m10s)" from status.progress
--   5. phase Succeeded and condition Ready=True -> Healthy
--   6. phase Succeeded, Ready not True -> Degraded, Promoted=False's message (else Ready's, else status.message)
--   7. anything else -> Progressing, status.message
-- An empty message falls back to status.reason.
local hs = {}

-- A field as text: strings as they are, numbers printed, anything else (nil, tables, booleans) "".
local function text(value)
  if type(value) == "string" then
    return value
  end
  if type(value) == "number" then
    return tostring(value)
  end
  return ""
end

-- The first of up to three values that is non-empty text, else "".
local function first(a, b, c)
  if text(a) ~= "" then
    return text(a)
  end
  if text(b) ~= "" then
    return text(b)
  end
  return text(c)
end

local function condition(status, conditionType)
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type == conditionType then
      return c
    end
  end
  return nil
end

local function isTrue(c)
  return c ~= nil and c.status == "True"
end

local function field(c, name)
  if c == nil then
    return nil
  end
  return c[name]
end

-- status.progress (ClassificationTrain) as "epoch 3/10, 30%, ETA 4m10s": only the parts whose fields exist.
local function progressText(status)
  local p = status.progress
  if type(p) ~= "table" then
    return ""
  end
  local parts = {}
  local epoch, maxEpoch = tonumber(p.epoch), tonumber(p.maxEpoch)
  if epoch ~= nil and maxEpoch ~= nil and maxEpoch > 0 then
    parts[#parts + 1] = "epoch " .. tostring(epoch) .. "/" .. tostring(maxEpoch)
  elseif epoch ~= nil then
    parts[#parts + 1] = "epoch " .. tostring(epoch)
  end
  local percent = tonumber(p.percent)
  if percent ~= nil then
    parts[#parts + 1] = tostring(percent) .. "%"
  end
  if text(p.eta) ~= "" then
    parts[#parts + 1] = "ETA " .. text(p.eta)
  end
  local out = ""
  for i, part in ipairs(parts) do
    if i > 1 then
      out = out .. ", "
    end
    out = out .. part
  end
  return out
end

local generation = nil
if type(obj.metadata) == "table" then
  generation = tonumber(obj.metadata.generation)
end
local status = obj.status

-- 1. The operator has not written a status for this generation yet.
if type(status) ~= "table" then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  else
    hs.message = "waiting for the operator to observe the resource"
  end
  return hs
end
local observed = tonumber(status.observedGeneration)
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  if observed ~= nil then
    hs.message = hs.message .. " (status is of generation " .. tostring(observed) .. ")"
  end
  return hs
end

local phase = text(status.phase)

-- 2. The run failed, or cannot proceed.
local stalled = condition(status, "Stalled")
if phase == "Failed" or isTrue(stalled) then
  hs.status = "Degraded"
  if isTrue(stalled) then
    hs.message = first(stalled.message, status.message, status.reason)
  else
    hs.message = first(status.message, status.reason, "the run failed")
  end
  return hs
end

-- 3. Suspended by the user (spec.suspend) or queued (reason Queued: waiting in a Kueue queue).
if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = first(status.message, status.reason)
  return hs
end

-- 4. A run of this generation is pending or running; a training run reports its progress.
if phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
  local message = first(status.message, status.reason)
  local progress = progressText(status)
  if progress ~= "" and message ~= "" then
    message = message .. " (" .. progress .. ")"
  elseif progress ~= "" then
    message = progress
  end
  hs.message = message
  return hs
end

-- 5. and 6. The run succeeded: Healthy only once Ready (its model is the promoted one).
if phase == "Succeeded" then
  local ready = condition(status, "Ready")
  if isTrue(ready) then
    hs.status = "Healthy"
    hs.message = first(status.message, status.reason)
    return hs
  end
  hs.status = "Degraded"
  local promoted = condition(status, "Promoted")
  if promoted ~= nil and promoted.status == "False" then
    hs.message = first(promoted.message, field(ready, "message"), status.message)
  else
    hs.message = first(field(ready, "message"), status.message, "the run succeeded but is not Ready")
  end
  return hs
end

-- 7. A phase this check does not know (or none yet).
hs.status = "Progressing"
if phase == "" then
  hs.message = first(status.message, status.reason, "waiting for the operator to report a phase")
else
  hs.message = first(status.message, status.reason, "phase " .. phase)
end
return hs
