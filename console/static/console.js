// The console's own script: live updates over Server-Sent Events, and the assignment form
// checked against the same JSON Schema the server uses (/schema.json). Every page works
// without it; it only makes them live and answers a bad value before the round trip.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;

  function setBroker(connected) {
    const banner = document.getElementById("broker-banner");
    if (banner) banner.hidden = connected;
    document.querySelectorAll("form button.primary, form button.danger, form button.command").forEach(function (b) {
      b.disabled = !connected;
    });
  }

  function stream(url, handlers) {
    if (!window.EventSource) return;
    const source = new EventSource(url);
    Object.keys(handlers).forEach(function (name) {
      source.addEventListener(name, function (e) { handlers[name](JSON.parse(e.data)); });
    });
    source.addEventListener("error", function () { /* the browser reconnects by itself */ });
  }

  // --- the device list ---
  function matches(row) {
    const stage = body.dataset.filterStage, vendor = body.dataset.filterVendor;
    const text = (body.dataset.filterText || "").toLowerCase();
    if (stage && row.stage !== stage) return false;
    if (vendor && row.vendor.toLowerCase() !== vendor.toLowerCase()) return false;
    if (text) {
      let needle = text;
      if (/^[0-9a-f:-]{2,}$/.test(text)) needle = text.replace(/[:-]/g, "");
      const hay = [row.mac, row.vendor, row.model, row.firmware, row.ip, row.stage, row.enrolment_detail]
        .join(" ").toLowerCase();
      if (hay.indexOf(needle) < 0) return false;
    }
    return true;
  }

  function cell(tr, index, text, cls) {
    let td = tr.children[index];
    if (!td) { td = document.createElement("td"); tr.appendChild(td); }
    if (cls) td.className = cls;
    td.textContent = text;
    return td;
  }

  function fillRow(tr, row) {
    tr.dataset.mac = row.mac;
    tr.dataset.stage = row.stage;
    tr.dataset.vendor = row.vendor;
    const macCell = cell(tr, 0, "", "mac");
    const link = document.createElement("a");
    link.href = "/devices/" + row.mac;
    link.textContent = row.mac;
    macCell.appendChild(link);
    cell(tr, 1, row.vendor); cell(tr, 2, row.model); cell(tr, 3, row.firmware); cell(tr, 4, row.ip);
    const stageCell = cell(tr, 5, "", "stage");
    const badge = document.createElement("span");
    badge.className = "stage stage-" + row.stage;
    badge.textContent = row.label;
    stageCell.appendChild(badge);
    cell(tr, 6, row.enrolment_detail, "enrolment enrolment-" + row.enrolment);
    cell(tr, 7, row.detail, "detail"); cell(tr, 8, row.updated_at, "time");
  }

  function updateList(rows) {
    const tbody = document.querySelector("#devices tbody");
    if (!tbody) return;
    rows.forEach(function (row) {
      let tr = tbody.querySelector('tr[data-mac="' + row.mac + '"]');
      if (row.gone || !matches(row)) { if (tr) tr.remove(); return; }
      const fresh = !tr;
      if (fresh) tr = document.createElement("tr");
      const moved = fresh || tr.dataset.stage !== row.stage;
      fillRow(tr, row);
      if (moved && row.stage === "awaiting-assignment") tbody.insertBefore(tr, tbody.firstChild);
      else if (fresh) tbody.appendChild(tr);
    });
    const count = document.getElementById("device-count");
    if (count) count.textContent = String(tbody.children.length);
    const empty = document.getElementById("empty");
    if (empty && tbody.children.length) empty.hidden = true;
  }

  // --- one device ---
  function updateDevice(mac, rows) {
    rows.forEach(function (row) {
      if (row.mac !== mac || row.gone) return;
      const stage = document.getElementById("device-stage");
      stage.className = "stage stage-" + row.stage;
      stage.textContent = row.label;
      document.getElementById("device-detail").textContent = row.detail;
      const enrolment = document.getElementById("device-enrolment");
      if (enrolment && enrolment.textContent !== (row.enrolment_detail || "none published")) refreshEnrolment(mac);
    });
  }

  // The enrolment section (its facts, a conflict's error, the admin's buttons) as the server
  // renders it now: one fetch of this page when the row says the enrolment changed.
  function refreshEnrolment(mac) {
    fetch("/devices/" + mac, { credentials: "same-origin" }).then(function (r) { return r.text(); })
      .then(function (html) {
        const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("enrolment");
        const here = document.getElementById("enrolment");
        if (fresh && here) here.replaceWith(document.importNode(fresh, true));
      }).catch(function () { /* the next change tries again */ });
  }

  function addEvents(events) {
    const list = document.getElementById("timeline");
    const outcome = document.getElementById("outcome");
    events.forEach(function (e) {
      const li = document.createElement("li");
      li.className = "event kind-" + e.kind + " fresh";
      const time = document.createElement("time");
      time.textContent = e.at;
      const kind = document.createElement("b");
      kind.textContent = e.kind;
      li.append(time, " ", kind, " " + e.text + (e.sha256 ? " sha256 " + e.sha256 : ""));
      list.insertBefore(li, list.firstChild);
      if (outcome && (e.kind === "config" || e.kind === "error" || e.kind === "files")) {
        outcome.textContent = "Outcome: " + e.kind + " — " + e.text;
        outcome.className = "outcome " + (e.kind === "error" ? "bad" : "good");
      }
    });
  }

  // --- the assignment form, checked against the schema ---
  function deref(schema, node) {
    while (node && node.$ref) {
      const extra = Object.assign({}, node);
      delete extra.$ref;
      node = Object.assign({}, schema.$defs[node.$ref.split("/").pop()], extra);
    }
    return node;
  }

  function nodeAt(schema, path) {
    let node = schema;
    for (const part of path) {
      node = deref(schema, node);
      if (/^\d+$/.test(part)) node = node.type === "array" ? node.items : null;
      else node = (node.properties || {})[part];
      if (!node) return null;
    }
    return deref(schema, node);
  }

  const SECRET = ["password", "admin_password"];

  function formDocument(form, schema) {
    const tree = {}, errors = {};
    new FormData(form).forEach(function (raw, name) {
      if (name === "csrf" || typeof raw !== "string") return;
      const last = name.split(".").pop();
      const text = SECRET.indexOf(last) >= 0 ? raw : raw.trim();
      if (!text) return;
      const path = name.split(".");
      const node = nodeAt(schema, path) || {};
      let value = text;
      if (node.type === "integer" && /^-?[0-9]{1,9}$/.test(text)) value = parseInt(text, 10);
      else if (node.type === "boolean" && /^(true|yes|on|1)$/i.test(text)) value = true;
      else if (node.type === "boolean" && /^(false|no|off|0)$/i.test(text)) value = false;
      else if (node.type === "array" && node.items && node.items.enum)
        value = text.split(/[\s,;|]+/).filter(Boolean).map(function (c) { return c.toLowerCase(); });
      else if (name === "vendor_settings") {
        try { value = JSON.parse(text); } catch (e) { errors[name] = "vendor_settings is not JSON: " + e.message; return; }
      }
      let at = tree;
      for (const part of path.slice(0, -1)) { at = at[part] = at[part] || {}; }
      at[path[path.length - 1]] = value;
    });
    const index = {};
    function listify(node, path) {
      if (node === null || typeof node !== "object" || Array.isArray(node)) return node;
      const keys = Object.keys(node);
      if (keys.length && keys.every(function (k) { return /^\d+$/.test(k); })) {
        return keys.sort(function (a, b) { return a - b; }).map(function (k, i) {
          index[path.concat([String(i)]).join(".")] = path.concat([k]).join(".");
          return listify(node[k], path.concat([k]));
        });
      }
      const out = {};
      keys.forEach(function (k) { out[k] = listify(node[k], path.concat([k])); });
      return out;
    }
    return { doc: listify(tree, []), errors: errors, index: index };
  }

  function check(schema, node, value, path, out) {
    node = deref(schema, node);
    const name = path.join(".");
    const say = function (m) { if (!(name in out)) out[name] = (name || "the assignment") + " " + m; };
    const types = { object: function (v) { return v && typeof v === "object" && !Array.isArray(v); },
                    array: Array.isArray, string: function (v) { return typeof v === "string"; },
                    integer: Number.isInteger, boolean: function (v) { return typeof v === "boolean"; } };
    if (node.anyOf) {
      const ok = node.anyOf.some(function (sub) { const o = {}; check(schema, sub, value, path, o); return !Object.keys(o).length; });
      if (!ok) say("must be text without control characters, a whole number, or true/false");
      return;
    }
    if (node.type && types[node.type] && !types[node.type](value)) { say("must be " + ({ integer: "a whole number", string: "text", boolean: "true or false", array: "a list", object: "an object" })[node.type]); return; }
    if (node.enum && node.enum.indexOf(value) < 0) { say(JSON.stringify(value) + " is not one of " + node.enum.join(", ")); return; }
    if (typeof value === "string") {
      if (node.minLength !== undefined && value.length < node.minLength) say("must be at least " + node.minLength + " characters long");
      if (node.maxLength !== undefined && value.length > node.maxLength) say("must be at most " + node.maxLength + " characters long");
      if (node.pattern && !new RegExp(node.pattern, "u").test(value)) say("has characters that are not allowed");
    }
    if (typeof value === "number") {
      if (node.minimum !== undefined && value < node.minimum) say("must be at least " + node.minimum);
      if (node.maximum !== undefined && value > node.maximum) say("must be at most " + node.maximum);
    }
    if (Array.isArray(value)) {
      if (node.maxItems !== undefined && value.length > node.maxItems) say("must have at most " + node.maxItems + " entries");
      if (node.uniqueItems && new Set(value.map(JSON.stringify)).size !== value.length) say("lists the same entry twice");
      if (node.items) value.forEach(function (v, i) { check(schema, node.items, v, path.concat([String(i)]), out); });
    }
    if (value && typeof value === "object" && !Array.isArray(value)) {
      const props = node.properties || {};
      Object.keys(value).forEach(function (k) {
        const sub = path.concat([k]);
        if (props[k]) check(schema, props[k], value[k], sub, out);
        else if (node.additionalProperties === false) out[sub.join(".")] = sub.join(".") + " is not a field of the assignment";
        else if (typeof node.additionalProperties === "object") {
          if (node.propertyNames && node.propertyNames.pattern && !new RegExp(node.propertyNames.pattern, "u").test(k))
            say("has a name with characters that are not allowed");
          check(schema, node.additionalProperties, value[k], sub, out);
        }
      });
    }
  }

  function showErrors(form, errors) {
    form.querySelectorAll(".field-error").forEach(function (span) {
      const message = errors[span.dataset.for] || "";
      span.textContent = message;
      span.parentElement.classList.toggle("invalid", Boolean(message));
    });
  }

  function watchForm(form) {
    let schema = null;
    fetch("/schema.json", { credentials: "same-origin" }).then(function (r) { return r.json(); })
      .then(function (s) { schema = s; }).catch(function () { /* the server checks anyway */ });
    form.addEventListener("submit", function (e) {
      if (!schema) return;
      const built = formDocument(form, schema);
      const found = {};
      check(schema, schema, built.doc, [], found);
      const errors = Object.assign({}, built.errors);
      Object.keys(found).forEach(function (k) { errors[built.index[k] || mapBack(k, built.index)] = found[k]; });
      showErrors(form, errors);
      if (Object.keys(errors).length) {
        e.preventDefault();
        const first = form.querySelector(".invalid input, .invalid select, .invalid textarea");
        if (first) first.focus();
      }
    });
  }

  function mapBack(name, index) {
    // accounts.1.port where accounts.1 came from the form's accounts.2
    const parts = name.split(".");
    for (let i = parts.length; i > 0; i--) {
      const head = parts.slice(0, i).join(".");
      if (index[head]) return [index[head]].concat(parts.slice(i)).join(".");
    }
    return name;
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (page === "devices") {
      stream("/events", { rows: updateList, broker: function (d) { setBroker(d.connected); } });
    } else if (page === "device") {
      const mac = body.dataset.mac;
      stream("/events?mac=" + mac, {
        rows: function (rows) { updateDevice(mac, rows); },
        timeline: addEvents,
        broker: function (d) { setBroker(d.connected); },
      });
      const form = document.getElementById("assign-form");
      if (form) watchForm(form);
    } else if (page === "services") {
      stream("/events?rows=0", {
        service: function (d) {
          const tr = document.querySelector('tr[data-service="' + d.service + "/" + d.instance + '"] .state');
          if (tr) { tr.textContent = d.state || "gone"; tr.className = "state state-" + (d.state || "gone"); }
        },
        broker: function (d) { setBroker(d.connected); },
      });
    }
  });
})();
