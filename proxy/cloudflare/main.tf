# Rendered by `delineate proxy render cloudflare` from proxy/profiles.toml: edit the profile and re-render, not this file.
# Profile cloudflare: Cloudflare proxied zone (Free/Pro/Business: fixed 100 s Proxy Read Timeout, 524).
#
# The Cloudflare side of the budget (provider cloudflare/cloudflare v5). Plan limits and
# importing rulesets a zone already has: README.md.
#   terraform init && terraform apply -var zone_id=... -var enterprise_plan=false

terraform {
  required_version = ">= 1.5"
  required_providers {
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = "~> 5.0"
    }
  }
}

variable "zone_id" {
  description = "The Cloudflare zone that proxies the API (orange-clouded DNS record)."
  type        = string
}

variable "enterprise_plan" {
  description = "Only Enterprise zones may change the Proxy Read Timeout and response buffering."
  type        = bool
  default     = false
}

variable "proxy_read_timeout_s" {
  description = "Seconds Cloudflare waits between two reads from the origin before a 524."
  type        = number
  default     = 100
}

# Enterprise only: the 524 timeout (100 s on every other plan) and streaming without buffering.
# v5 has one resource per zone setting (v4's cloudflare_zone_settings_override is gone).
resource "cloudflare_zone_setting" "proxy_read_timeout" {
  count      = var.enterprise_plan ? 1 : 0
  zone_id    = var.zone_id
  setting_id = "proxy_read_timeout"
  value      = var.proxy_read_timeout_s
}

resource "cloudflare_zone_setting" "response_buffering" {
  count      = var.enterprise_plan ? 1 : 0
  zone_id    = var.zone_id
  setting_id = "response_buffering"
  value      = "off"
}

# Every plan: never cache the API. Job status, the stream and the file redirect are per request.
# A zone has one entry-point ruleset per phase: if this zone already has Cache Rules, import
# that ruleset into this resource first (README.md), or apply fails.
resource "cloudflare_ruleset" "api_cache_bypass" {
  zone_id     = var.zone_id
  name        = "delineate: bypass cache for the API"
  description = "Status, SSE and file redirects must always reach the origin"
  kind        = "zone"
  phase       = "http_request_cache_settings"

  rules = [
    {
      description = "bypass cache for /v1/ and the health checks"
      expression  = "(starts_with(http.request.uri.path, \"/v1/\") or starts_with(http.request.uri.path, \"/health\"))"
      action      = "set_cache_settings"
      action_parameters = {
        cache = false
      }
      enabled = true
    }
  ]
}

# Every plan: do not compress event streams (compression buffers events until a block fills).
# The same one-per-phase rule applies to existing Compression Rules.
resource "cloudflare_ruleset" "event_stream_compression" {
  zone_id     = var.zone_id
  name        = "delineate: no compression for event streams"
  description = "Server-Sent Events must leave the edge as they arrive"
  kind        = "zone"
  phase       = "http_response_compression"

  rules = [
    {
      description = "SSE: no compression"
      expression  = "(starts_with(http.request.uri.path, \"/v1/download/stream/\"))"
      action      = "compress_response"
      action_parameters = {
        algorithms = [{ name = "none" }]
      }
      enabled = true
    }
  ]
}
