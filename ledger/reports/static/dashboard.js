// Ledger dashboard: reads /api/reports/* with the key the user typed (kept in
// sessionStorage, sent as a Bearer token; no cookies) and draws it with Chart.js.
// Served as a file so that the page runs under a strict Content-Security-Policy.
"use strict";

(function () {
  const KEY_STORAGE = "ledger.key";
  const PALETTE = [
    "#3b6fd8", "#e07b39", "#2f9e62", "#b548c6", "#d64545", "#1aa3a3",
    "#8c6d31", "#6b7280", "#e0a100", "#5b4bd6", "#c2185b", "#4caf50",
  ];
  const OTHER = "(other)";
  const $ = (id) => document.getElementById(id);
  const charts = {};

  // -- money: exact decimal strings in, cents out (no float arithmetic) ---------------

  function cents(text) {
    let negative = text.startsWith("-");
    const [whole, frac = ""] = (negative ? text.slice(1) : text).split(".");
    const digits = (frac + "000").slice(0, 3);
    let value = BigInt(whole) * 100n + BigInt(digits.slice(0, 2));
    if (Number(digits[2]) >= 5) value += 1n;
    if (value === 0n) negative = false;
    const units = (value / 100n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return (negative ? "-" : "") + units + "." + (value % 100n).toString().padStart(2, "0");
  }

  // -- API --------------------------------------------------------------------------

  class SignedOut extends Error {}

  async function api(path, params) {
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (!key) throw new SignedOut("Not signed in.");
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(params || {})) {
      for (const item of [].concat(value)) url.searchParams.append(name, item);
    }
    const response = await fetch(url, {
      headers: { Authorization: "Bearer " + key },
      credentials: "omit",
      cache: "no-store",
    });
    if (response.status === 401) throw new SignedOut("That key was not accepted.");
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error.message; } catch (_) { /* keep status */ }
      throw new Error(message);
    }
    return response;
  }

  async function json(path, params) {
    return (await api(path, params)).json();
  }

  // -- sign in and out --------------------------------------------------------------

  function showSignedIn(signedIn) {
    $("sign-in").hidden = signedIn;
    $("board").hidden = !signedIn;
    $("sign-out").hidden = !signedIn;
    if (!signedIn) {
      $("who").textContent = "";
      document.body.dataset.state = "signed-out";
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    showSignedIn(false);
    $("sign-in-error").textContent = message || "";
    $("month-status").textContent = "";
  }

  async function signIn(event) {
    event.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("key").value = "";
    $("sign-in-error").textContent = "";
    await load();
  }

  // -- drawing ----------------------------------------------------------------------

  function bucketLabel(iso, granularity) {
    // The API gives each bucket's local start with its offset, e.g. 2026-10-25T00:00:00+02:00.
    if (granularity === "hour") return iso.slice(5, 16).replace("T", " ");
    if (granularity === "month") return iso.slice(0, 7);
    return iso.slice(0, 10);
  }

  function groupName(group, dimension) {
    const value = group[dimension];
    if (dimension === "key" && value) return (group.key_name ? group.key_name + " · " : "") + value + "…";
    if (value === null || value === undefined) return dimension === "team" ? "(no team)" : "(none)";
    return String(value);
  }

  function drawChart(id, config) {
    if (charts[id]) charts[id].destroy();
    config.options = Object.assign(
      { animation: false, responsive: true, maintainAspectRatio: false },
      config.options || {}
    );
    charts[id] = new Chart($(id), config);
  }

  function drawSpendOverTime(spend) {
    const labels = spend.buckets.map((iso) => bucketLabel(iso, spend.granularity));
    const index = new Map(spend.buckets.map((iso, i) => [iso, i]));
    const datasets = spend.groups.map((row, i) => {
      const name = groupName(row.group, "team");
      const data = new Array(labels.length).fill(0);
      const exact = new Array(labels.length).fill("0.000000000");
      for (const point of spend.series) {
        if (groupName(point.group, "team") !== name) continue;
        const at = index.get(point.bucket);
        if (at === undefined) continue;
        data[at] = Number(point.cost_usd);
        exact[at] = point.cost_usd;
      }
      return { label: name, data, exact, backgroundColor: PALETTE[i % PALETTE.length], stack: "spend" };
    });
    drawChart("spend-chart", {
      type: "bar",
      data: { labels, datasets },
      options: {
        scales: { x: { stacked: true }, y: { stacked: true, title: { display: true, text: "USD" } } },
        plugins: {
          tooltip: {
            callbacks: {
              label: (item) => item.dataset.label + ": $" + item.dataset.exact[item.dataIndex],
            },
          },
        },
      },
    });
  }

  function drawTop(id, spend, dimension) {
    const rows = spend.groups;
    drawChart(id, {
      type: "bar",
      data: {
        labels: rows.map((row) => (row.other ? OTHER : groupName(row.group, dimension))),
        datasets: [{
          label: "Spend (USD)",
          data: rows.map((row) => Number(row.cost_usd)),
          exact: rows.map((row) => row.cost_usd),
          backgroundColor: rows.map((_, i) => PALETTE[i % PALETTE.length]),
        }],
      },
      options: {
        indexAxis: "y",
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: (item) => "$" + item.dataset.exact[item.dataIndex] } },
        },
      },
    });
  }

  function drawTotals(totals) {
    const cost = $("total-cost");
    cost.textContent = "$" + cents(totals.cost_usd);
    cost.title = "$" + totals.cost_usd;
    cost.dataset.exact = totals.cost_usd;
    $("total-requests").textContent = totals.requests.toLocaleString("en-US");
    $("total-errors").textContent = totals.errors.toLocaleString("en-US");
    $("total-blocked").textContent = totals.blocked.toLocaleString("en-US");
    const p50 = totals.latency_p50_ms, p95 = totals.latency_p95_ms;
    $("total-latency").textContent = p50 === null ? "–" : p50 + " / " + p95 + " ms";
  }

  function drawBudgets(budgets) {
    const holder = $("budgets");
    holder.replaceChildren();
    if (budgets.length === 0) {
      const empty = document.createElement("p");
      empty.className = "muted";
      empty.textContent = "No budgets.";
      holder.append(empty);
      return;
    }
    for (const budget of budgets) {
      const percent = budget.percent_used === null ? 0 : Number(budget.percent_used);
      // Green below the second-highest threshold, amber from it, red from the highest.
      const thresholds = budget.thresholds.length ? budget.thresholds : [80, 100];
      const top = thresholds[thresholds.length - 1];
      const warn = thresholds.length > 1 ? thresholds[thresholds.length - 2] : top;
      const level = percent >= top ? "over" : percent >= warn ? "warn" : "ok";

      const row = document.createElement("div");
      row.className = "budget";
      row.dataset.budgetId = budget.id;
      row.dataset.percent = budget.percent_used === null ? "" : budget.percent_used;

      const name = document.createElement("span");
      name.className = "name";
      name.textContent = budget.name;
      name.title = budget.scope + " · " + budget.period + " · " + budget.mode;

      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("div");
      fill.className = "fill " + level;
      fill.style.width = Math.min(100, percent) + "%";
      bar.append(fill);
      for (const threshold of budget.thresholds) {
        const mark = document.createElement("span");
        mark.className = "threshold";
        mark.style.left = Math.min(100, threshold) + "%";
        mark.title = threshold + "%";
        bar.append(mark);
      }

      const figures = document.createElement("span");
      figures.className = "figures";
      let text = "$" + cents(budget.spent_usd) + " of $" + cents(budget.limit_usd);
      if (budget.percent_used !== null) text += " (" + budget.percent_used + "%)";
      if (budget.projected_usd !== null) text += " · projected $" + cents(budget.projected_usd);
      text += " · " + budget.alerts_sent + " alert" + (budget.alerts_sent === 1 ? "" : "s");
      figures.textContent = text;

      row.append(name, bar, figures);
      holder.append(row);
    }
  }

  function drawAlerts(alerts) {
    const list = $("alerts");
    list.replaceChildren();
    if (alerts.length === 0) {
      const item = document.createElement("li");
      item.className = "muted";
      item.textContent = "No alerts.";
      list.append(item);
      return;
    }
    for (const alert of alerts) {
      const item = document.createElement("li");
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = alert.created_at.slice(0, 16).replace("T", " ");
      const what = document.createElement("span");
      what.textContent = alert.budget + ": " + alert.message;
      item.append(when, what);
      list.append(item);
    }
  }

  // -- loading ----------------------------------------------------------------------

  function rangeParams() {
    const days = Number($("range").value);
    const granularity = days <= 1 ? "hour" : days >= 90 ? "week" : "day";
    const until = new Date();
    const since = new Date(until.getTime() - days * 86400 * 1000);
    return {
      since: since.toISOString(),
      until: until.toISOString(),
      timezone: $("timezone").value.trim() || "UTC",
      granularity,
    };
  }

  async function load() {
    document.body.dataset.state = "loading";
    $("load-error").textContent = "";
    try {
      const me = await json("/api/reports/me");
      showSignedIn(true);
      $("who").textContent = me.admin ? "Signed in with the admin key (all teams)" : "Team " + me.team;
      const range = rangeParams();
      const [byTeam, byModel, byKey, budgets] = await Promise.all([
        json("/api/reports/spend", Object.assign({}, range, { group_by: "team" })),
        json("/api/reports/spend", Object.assign({}, range, { group_by: "model", granularity: "none", top: 8 })),
        json("/api/reports/spend", Object.assign({}, range, { group_by: "key", granularity: "none", top: 8 })),
        json("/api/reports/budgets"),
      ]);
      drawTotals(byTeam.totals);
      drawSpendOverTime(byTeam);
      drawTop("models-chart", byModel, "model");
      drawTop("keys-chart", byKey, "key");
      drawBudgets(budgets.data);
      drawAlerts(budgets.recent_alerts);
      document.body.dataset.state = "ready";
    } catch (error) {
      if (error instanceof SignedOut) {
        signOut(error.message);
      } else {
        $("load-error").textContent = error.message;
        document.body.dataset.state = "error";
      }
    }
  }

  async function download(event) {
    const format = event.currentTarget.dataset.format;
    const month = $("month").value;
    if (!month) return;
    try {
      const response = await api("/api/reports/monthly/" + month, { format });
      const status = response.headers.get("x-ledger-month-status");
      const hash = response.headers.get("x-content-sha256") || "";
      $("month-status").textContent =
        month + " is " + status + (status === "closed" ? " · sha256 " + hash.slice(0, 12) + "…" : "");
      const link = document.createElement("a");
      link.href = URL.createObjectURL(await response.blob());
      link.download = "ledger-" + month + "." + format;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (error) {
      if (error instanceof SignedOut) signOut(error.message);
      else $("month-status").textContent = error.message;
    }
  }

  function start() {
    $("timezone").value = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    const now = new Date();
    $("month").value = now.getFullYear() + "-" + String(now.getMonth() + 1).padStart(2, "0");
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut(""));
    $("refresh").addEventListener("click", load);
    $("range").addEventListener("change", load);
    $("timezone").addEventListener("change", load);
    for (const button of document.querySelectorAll("button.download")) {
      button.addEventListener("click", download);
    }
    if (sessionStorage.getItem(KEY_STORAGE)) load();
    else showSignedIn(false);
  }

  start();
})();
