#!/usr/bin/env python3
"""Writes the seed corpora (seeds/<target>/) in each target's input format.

token_response: 2 bytes status (big-endian), "content-type\nretry-after\n", body.
retry_after:    8 bytes now (big-endian seconds), 4 bytes k, header value.
www_authenticate: the header's fields, one a line.
callback_request: the bytes the login callback's socket receives.
"""
import os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
JSON = b"application/json"
HTML = b"text/html; charset=utf-8"

token_response = {
    "ok_full": (200, JSON, b"", b'{"access_token":"sim_at_0123456789abcdef","refresh_token":"sim_rt_0123456789abcdef","token_type":"Bearer","expires_in":3600,"scope":"read"}'),
    "ok_minimal": (200, b"", b"", b'{"access_token":"a"}'),
    "ok_expires_string": (200, JSON, b"", b'{"access_token":"sim_at_x","expires_in":"60"}'),
    "ok_expires_negative": (200, JSON, b"", b'{"access_token":"sim_at_x","expires_in":-1}'),
    "ok_expires_huge": (200, JSON, b"", b'{"access_token":"sim_at_x","expires_in":1e30}'),
    "ok_expires_out_of_range": (200, JSON, b"", b'{"access_token":"sim_at_x","expires_in":1e400}'),
    "ok_expires_null": (200, JSON, b"", b'{"access_token":"sim_at_x","expires_in":null}'),
    "ok_expires_bool": (200, JSON, b"", b'{"access_token":"sim_at_x","expires_in":true}'),
    "login_page": (200, HTML, b"", b"<!DOCTYPE html><html><form>VPN login</form></html>"),
    "not_token_json": (200, JSON, b"", b'{"token_type":"Bearer"}'),
    "empty_200": (200, JSON, b"", b""),
    "no_content_204": (204, b"", b"", b""),
    "truncated": (200, JSON, b"", b'{"access_token":"ab'),
    "invalid_utf8_200": (200, JSON, b"", b'{"access_token":"ab\xff\xfecd"}'),
    "invalid_grant": (400, JSON, b"", b'{"error":"invalid_grant","error_description":"refresh token revoked"}'),
    "invalid_client_401": (401, JSON, b"", b'{"error":"invalid_client"}'),
    "invalid_scope": (400, JSON, b"", b'{"error":"invalid_scope"}'),
    "server_error": (500, JSON, b"", b'{"error":"server_error","error_description":"try later"}'),
    "temporarily_unavailable_429": (429, JSON, b"120", b'{"error":"temporarily_unavailable"}'),
    "rate_limited_date": (503, b"", b"Sun, 15 Jun 2025 15:07:00 GMT", b""),
    "verdict_under_504": (504, JSON, b"", b'{"error":"invalid_grant"}'),
    "latin1_description": (400, JSON, b"", b'{"error":"invalid_grant","error_description":"Jeton expir\xe9"}'),
    "error_with_tokens": (400, JSON, b"", b'{"error":"server_error","error_description":"retry","access_token":"sim_at_0123456789abcdef","refresh_token":"sim_rt_0123456789abcdef"}'),
    "unknown_code": (400, JSON, b"", b'{"error":"vendor_code","error_description":"something"}'),
    "waf_403": (403, HTML, b"", b"<!DOCTYPE html><html><body><h1>Access denied</h1></body></html>"),
    "redirect_302": (302, b"", b"", b""),
    "empty_401": (401, b"", b"", b""),
    "binary_400": (400, b"", b"", b"\xff\xfe\x00\x80"),
    "json_array": (200, JSON, b"", b'[{"error":"invalid_grant"}]'),
    "escapes": (400, JSON, b"", b'{"error":"invalid_grant","error_description":"a\\u001b[31m\\nb\\ud83d\\ude00"}'),
}

retry_after = {
    "seconds": (1_750_000_000, 0, b"120"),
    "date_future": (1_750_000_000, 90, b"Sun, 15 Jun 2025 15:08:20 GMT"),
    "date_past": (1_750_000_000, 90, b"Thu, 01 Jan 1970 00:00:00 GMT"),
    "rfc850": (1_750_000_000, 7, b"Sunday, 15-Jun-25 15:08:20 GMT"),
    "asctime": (1_750_000_000, 7, b"Sun Jun 15 15:08:20 2025"),
    "garbage": (0, 0, b"soon"),
    "huge": (253_402_300_000, 4_000_000_000, b"99999999999999999999999"),
    "year_9999": (1_750_000_000, 1, b"Fri, 31 Dec 9999 23:59:59 GMT"),
    "spaces": (1_750_000_000, 1, b"  42  "),
}

www_authenticate = {
    "mcp": b'Bearer resource_metadata="https://r.example/.well-known/oauth-protected-resource/mcp", scope="files:read files:write"',
    "mcp_error": b'Bearer error="invalid_token", error_description="The access token expired", resource_metadata="https://r.example/m"',
    "several": b'Basic realm="a, b", Bearer error="invalid_token", error_description="say \\"hi\\", then go", resource_metadata="https://r/m"',
    "token68": b"Negotiate abc+/==, Bearer realm=x ,  , NTLM,bearer   Resource_Metadata = \"u\"",
    "two_fields": b'Basic realm="x"\nBearer scope="a"',
    "unterminated": b'Basic realm="x", Bearer realm="never closed',
    "escape_at_end": b'Bearer a="\\',
    "empty_value": b'Bearer a=""',
    "bare": b"Bearer",
    "commas": b",,, ,Bearer,, ",
    "utf8_value": 'Bearer realm="caf\u00e9 \u2603", scope=x'.encode(),
    "tabs": b"Bearer\tscope\t=\t\"a b\"\t,\trealm=r",
}

CALLBACK = b"/callback?code=sim_code_0123456789&state=Zm9vYmFyYmF6"
CAP_LINE = b"GET /callback HTTP/1.1\r\nX: "
callback_request = {
    "firefox": b"GET " + CALLBACK + b" HTTP/1.1\r\nHost: 127.0.0.1:43117\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: text/html\r\nConnection: keep-alive\r\n\r\n",
    "error": b"GET /callback?error=access_denied&error_description=The+user+said+no&state=s HTTP/1.1\r\nHost: 127.0.0.1:43117\r\n\r\n",
    "favicon": b"GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1:43117\r\n\r\n",
    "post": b"POST /callback HTTP/1.1\r\nContent-Length: 4\r\n\r\ncode",
    "absolute_form": b"GET http://127.0.0.1:43117/callback?code=c HTTP/1.1\r\n\r\n",
    "authority_like": b"GET //evil.example/callback?code=c&state=s HTTP/1.1\r\n\r\n",
    "backslash": b"GET /\\evil.example\\callback HTTP/1.1\r\n\r\n",
    "percent": b"GET /callback?code=%00%ff%zz&state=%E2%98%83 HTTP/1.1\r\n\r\n",
    "bare_lf": b"GET /callback?code=c HTTP/1.1\nHost: x\n\r\n\r\n",
    "http09": b"GET /callback\r\n\r\n",
    "partial": b"GET /callback?code=c HTTP/1.1\r\nHost: 127.0.0.1",
    "tail_not_utf8": b"GET /callback?code=c HTTP/1.1\r\n\r\n\xff\xfe",
    "header_not_utf8": b"GET /callback?code=c HTTP/1.1\r\nX: \xe9\r\n\r\n",
    "tls_hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),
    # A head of exactly 16 KiB, blank line included, and one a byte longer.
    "at_cap": CAP_LINE + b"a" * (16 * 1024 - len(CAP_LINE) - 4) + b"\r\n\r\n",
    "past_cap": CAP_LINE + b"a" * (16 * 1024 - len(CAP_LINE) - 3) + b"\r\n\r\n",
}

def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

for name, (status, ct, ra, body) in token_response.items():
    write("token_response", name, struct.pack(">H", status) + ct + b"\n" + ra + b"\n" + body)
for name, (now, k, value) in retry_after.items():
    write("retry_after", name, struct.pack(">QI", now, k) + value)
for name, value in www_authenticate.items():
    write("www_authenticate", name, value)
for name, value in callback_request.items():
    write("callback_request", name, value)
