// The Mirari web console: polls /api/overview, follows /api/events and an instance's console
// (server-sent events). Plain JavaScript, no dependencies; everything shown is set as text.
"use strict";

const POLL_MS = 2000;
const EVENTS_SHOWN = 500;
const CONSOLE_CHARS = 200000;

const $ = (id) => document.getElementById(id);

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function fill(tableId, rows) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows);
}

function row(cells, attributes = {}) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  for (const [name, value] of Object.entries(attributes)) tr.setAttribute(name, value);
  return tr;
}

const phaseClass = { running: "ok", failed: "bad", lost: "bad", exited: "warn", stopping: "warn" };
const healthClass = { healthy: "ok", unhealthy: "bad", starting: "warn" };

function render(view) {
  const node = view.node;
  const leader = node.leader_id ? `leader ${node.leader_id}` : "no leader";
  $("raft").textContent =
    `coordinator ${node.id}: ${node.role}, term ${node.term}, ${leader}, applied ${node.applied_index} / committed ${node.commit_index}` +
    (node.disk_failure ? ` — disk failure: ${node.disk_failure}` : "");
  $("raft").className = "raft " + (node.disk_failure || !node.leader_id ? "bad" : "ok");
  // Only the leader knows how far each member's log matches its own.
  fill("members", node.members.map((m) => {
    const behind = m.matched === null ? null : Math.max(0, node.commit_index - m.matched);
    return row([
      cell(String(m.id)), cell(m.address, "mono"),
      cell(m.id === node.leader_id ? "leader" : m.id === node.id ? node.role : "follower"),
      cell(m.matched === null ? "—" : `${m.matched} (${m.replication})`),
      cell(behind === null ? "—" : String(behind), behind === null ? "muted" : behind > 100 ? "bad" : "ok"),
    ], { "data-member": String(m.id) });
  }));
  fill("hosts", view.hosts.map((h) => row([
    cell(h.id), cell(h.status, h.status === "up" ? "ok" : h.status === "down" ? "bad" : "warn"),
    cell(h.backends.join(" ")),
    cell(`${h.used.instances} / ${h.capacity.instances}`),
    cell(`${h.used.memory_mib} / ${h.capacity.memory_mib}`),
    cell(`${h.used.vcpus} / ${h.capacity.vcpus}`),
  ], { "data-host": h.id })));
  fill("deployments", view.deployments.map((d) => {
    const r = d.rollout;
    const update = !r ? "" : r.failed ? `failed: ${r.failed}` : r.awaiting_promotion
      ? `${r.version}: canaries await promotion`
      : `${r.version}: ${r.settled} settled, ${r.replacements} replacing, ${r.outdated} outdated`;
    return row([
      cell(d.app), cell(d.version), cell(d.target),
      cell(d.stopped ? "stopped" : `${d.running} / ${d.count}`, d.stopped ? "muted" : d.running === d.count ? "ok" : "warn"),
      cell(d.has_health_check ? `${d.healthy}` : "—"),
      cell(update, r && r.failed ? "bad" : ""),
      cell(d.unplaced ? `${d.unplaced}: ${d.unplaced_reason}` : "", d.unplaced ? "bad" : ""),
    ], { "data-app": d.app });
  }));
  fill("instances", view.instances.map((i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "console";
    button.addEventListener("click", () => openConsole(i.id));
    const actions = document.createElement("td");
    actions.append(button);
    return row([
      cell(i.id, "mono"), cell(i.app), cell(i.version), cell(i.host),
      cell(i.desired === "running" ? i.phase : `${i.phase} (stopping)`, phaseClass[i.phase] || ""),
      cell(i.health, healthClass[i.health] || "muted"),
      cell(i.addresses.join(" "), "mono"), cell(String(i.restarts)), actions,
    ], { "data-instance": i.id, title: i.message });
  }));
  $("instances-count").textContent = view.instances_total > view.instances.length
    ? `(the first ${view.instances.length} of ${view.instances_total})` : `(${view.instances_total})`;
  fill("networks", view.networks.map((n) => row([cell(n.name), cell(n.subnet, "mono"), cell(`${n.held} / ${n.pool_size}`)])));
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function poll() {
  try {
    const answer = await fetch("/api/overview", { cache: "no-store" });
    if (!answer.ok) throw new Error(`${answer.status} ${await answer.text()}`);
    render(await answer.json());
  } catch (error) {
    $("raft").textContent = `cannot read this coordinator: ${error.message}`;
    $("raft").className = "raft bad";
  }
  setTimeout(poll, POLL_MS);
}

function followEvents() {
  const list = $("events");
  const source = new EventSource("/api/events");
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    const item = document.createElement("li");
    item.value = event.index;
    item.dataset.kind = event.kind;
    const when = event.at_ms ? new Date(event.at_ms).toLocaleTimeString() : "";
    item.textContent = `${when}  ${event.kind}  ${event.text}`;
    list.prepend(item);
    while (list.children.length > EVENTS_SHOWN) list.lastElementChild.remove();
  };
  source.addEventListener("gone", (message) => {
    source.close();
    $("events-note").textContent = `${message.data} (reload the page to start from the newest)`;
  });
  source.onerror = () => { $("events-note").textContent = "reconnecting…"; };
  source.onopen = () => { $("events-note").textContent = ""; };
}

let consoleSource = null;

function openConsole(id) {
  if (consoleSource) consoleSource.close();
  const pre = $("console");
  pre.textContent = "";
  $("console-id").textContent = id;
  $("console-panel").hidden = false;
  consoleSource = new EventSource(`/api/instances/${encodeURIComponent(id)}/console`);
  consoleSource.onmessage = (message) => {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = (pre.textContent + JSON.parse(message.data)).slice(-CONSOLE_CHARS);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  };
  consoleSource.addEventListener("end", (message) => {
    consoleSource.close();
    pre.textContent += `\n[console ended: ${message.data}]\n`;
  });
}

$("console-close").addEventListener("click", () => {
  if (consoleSource) consoleSource.close();
  consoleSource = null;
  $("console-panel").hidden = true;
});

poll();
followEvents();
