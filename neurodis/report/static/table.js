// The report's one script: a sortable, filterable, paginated table over window.NEURODIS_TABLE
// ({columns: [{key, label, type}], rows: [[...]], link: {column, href}}), drawn a page at a time so
// tens of thousands of rows stay fast. No dependencies.
(function () {
  "use strict";
  var data = window.NEURODIS_TABLE;
  var PAGE = 100;
  var cols = data.columns, rows = data.rows;
  var state = { sort: null, dir: 1, text: "", enums: {}, page: 0 };
  var view = rows.slice();
  var table = document.getElementById("table");
  var controls = document.getElementById("controls");
  var info = document.getElementById("info");

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v, c) {
    if (v === null || v === undefined) return "";
    if (c.type === "num") return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v);
    if (c.type === "bool") return v ? "yes" : "no";
    return String(v);
  }
  function compare(i) {
    return function (a, b) {
      var x = a[i], y = b[i];
      if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;
      if (y === null || y === undefined) return -1;
      if (x < y) return -state.dir;
      if (x > y) return state.dir;
      return 0;
    };
  }
  function apply() {
    var text = state.text.toLowerCase();
    view = rows.filter(function (r) {
      for (var i in state.enums) {
        if (state.enums[i] !== "" && String(r[i]) !== state.enums[i]) return false;
      }
      if (!text) return true;
      for (var j = 0; j < cols.length; j++) {
        if (cols[j].type !== "num" && r[j] !== null && String(r[j]).toLowerCase().indexOf(text) >= 0) return true;
      }
      return false;
    });
    if (state.sort !== null) view.sort(compare(state.sort));
    state.page = Math.min(state.page, Math.max(0, Math.ceil(view.length / PAGE) - 1));
    draw();
  }
  function draw() {
    var tbody = table.tBodies[0];
    tbody.textContent = "";
    var start = state.page * PAGE, end = Math.min(view.length, start + PAGE);
    for (var r = start; r < end; r++) {
      var tr = el("tr");
      for (var j = 0; j < cols.length; j++) {
        var td = el("td", cols[j].type === "num" ? { class: "num" } : {});
        var text = fmt(view[r][j], cols[j]);
        if (data.link && j === data.link.column && view[r][data.link.href]) {
          td.appendChild(el("a", { href: view[r][data.link.href] }, text));
        } else {
          td.textContent = text;
        }
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
    info.textContent = view.length ? "rows " + (start + 1) + "\u2013" + end + " of " + view.length + " (" + rows.length + " in all)" : "no rows match";
    var ths = table.tHead.rows[0].cells;
    for (var k = 0; k < ths.length; k++) ths[k].className = k === state.sort ? (state.dir > 0 ? "asc" : "desc") : "";
  }
  function build() {
    var head = el("tr");
    cols.forEach(function (c, i) {
      var th = el("th", { "data-key": c.key }, c.label);
      th.addEventListener("click", function () {
        state.dir = state.sort === i ? -state.dir : 1;
        state.sort = i;
        apply();
      });
      head.appendChild(th);
    });
    table.appendChild(el("thead")).appendChild(head);
    table.appendChild(el("tbody"));
    var search = el("input", { id: "filter", type: "search", placeholder: "filter (layer, status, explanation ...)" });
    search.addEventListener("input", function () { state.text = search.value; state.page = 0; apply(); });
    controls.appendChild(search);
    cols.forEach(function (c, i) {
      if (c.type !== "enum" && c.type !== "bool") return;
      var values = {};
      rows.forEach(function (r) { if (r[i] !== null) values[String(r[i])] = true; });
      var sel = el("select", { id: "enum-" + c.key });
      sel.appendChild(el("option", { value: "" }, c.label + ": all"));
      Object.keys(values).sort().forEach(function (v) { sel.appendChild(el("option", { value: v }, c.label + ": " + (c.type === "bool" ? (v === "true" ? "yes" : "no") : v))); });
      sel.addEventListener("change", function () { state.enums[i] = sel.value; state.page = 0; apply(); });
      controls.appendChild(sel);
    });
    var pager = el("nav", { class: "pager" });
    var prev = el("button", { id: "prev" }, "\u2190 previous"), next = el("button", { id: "next" }, "next \u2192");
    prev.addEventListener("click", function () { if (state.page > 0) { state.page--; draw(); } });
    next.addEventListener("click", function () { if ((state.page + 1) * PAGE < view.length) { state.page++; draw(); } });
    pager.appendChild(prev); pager.appendChild(next);
    controls.appendChild(pager);
    apply();
  }
  build();
})();
