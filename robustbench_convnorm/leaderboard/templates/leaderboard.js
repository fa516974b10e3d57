// Sortable tables and the mean ± std / 95% interval switch. No network, no library.
(function () {
  "use strict";
  function sortKey(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) raw = cell.textContent.trim();
    var n = parseFloat(raw);
    return { missing: raw === "" || raw === "\u2013", num: isNaN(n) ? null : n, text: raw.toLowerCase() };
  }
  function compare(a, b, numeric) {
    if (a.missing || b.missing) return a.missing === b.missing ? 0 : (a.missing ? 1 : -1);
    if (numeric) return a.num - b.num;
    return a.text < b.text ? -1 : a.text > b.text ? 1 : 0;
  }
  function sortBy(table, th) {
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var current = th.getAttribute("aria-sort");
    var dir = current ? (current === "ascending" ? "descending" : "ascending")
                      : (th.getAttribute("data-first") || "ascending");
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (r, i) { return { r: r, i: i, k: sortKey(r.cells[col]) }; });
    var numeric = rows.every(function (x) { return x.k.missing || x.k.num !== null; });
    var sign = dir === "ascending" ? 1 : -1;
    rows.sort(function (a, b) {
      var missing = a.k.missing || b.k.missing;
      var c = compare(a.k, b.k, numeric);
      return (missing ? c : sign * c) || a.i - b.i;  // missing values stay last; stable
    });
    rows.forEach(function (x) { body.appendChild(x.r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, th); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th); } });
    });
  });
  document.querySelectorAll("input[name=cellview]").forEach(function (input) {
    input.addEventListener("change", function () { document.body.setAttribute("data-view", input.value); });
  });
})();
