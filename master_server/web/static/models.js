// The model registry: the list of models, and one model's versions with their checkpoints.

import { API, api, fmtNum, fmtTime, h, qs, sortableTable } from "./api.js";
import { fact } from "./experiment.js";

export async function modelListPage(main) {
  const view = { sortKey: "name", desc: false, name: "", archived: false };
  const nameIn = h("input", { type: "search", placeholder: "name contains", "aria-label": "name filter" });
  const archIn = h("input", { type: "checkbox" });
  const box = h("div", { class: "table-wrap", id: "models" });
  main.append(h("h1", {}, "Models"), h("div", { class: "panel" },
    h("div", { class: "toolbar" }, nameIn, h("label", {}, archIn, "archived")), box));
  let rows = [];
  const draw = () => {
    if (!rows.length) {
      box.replaceChildren(h("div", { class: "empty" }, "No models registered. Register one with detsdk model create / Model.register_version."));
      return;
    }
    box.replaceChildren(sortableTable([
      { key: "name", label: "Name", render: (m) => h("a", { href: `/models/${encodeURIComponent(m.name)}` }, m.name) },
      { key: "description", label: "Description" },
      { key: "num_versions", label: "Versions", numeric: true },
      { key: "labels", label: "Labels", value: (m) => m.labels.join(","), render: (m) => m.labels.map((l) => h("span", { class: "label" }, l)) },
      { key: "last_updated_time", label: "Updated", render: (m) => fmtTime(m.last_updated_time) },
    ], rows, { sortKey: view.sortKey, desc: view.desc, onSort: (k, d) => { view.sortKey = k; view.desc = d; draw(); } }));
  };
  const load = async () => {
    rows = (await api(`/models${qs({ name: view.name, archived: view.archived })}`)).models;
    draw();
  };
  nameIn.addEventListener("input", () => { view.name = nameIn.value.trim(); load(); });
  archIn.addEventListener("change", () => { view.archived = archIn.checked; load(); });
  await load();
}

export async function modelPage(main, name) {
  const m = (await api(`/models/${encodeURIComponent(name)}`)).model;
  const versions = (await api(`/models/${encodeURIComponent(name)}/versions`)).model_versions;
  const metricNames = [...new Set(versions.flatMap((v) => Object.keys(v.checkpoint?.validation_metrics || {})))].sort();
  main.append(
    h("div", { class: "crumbs" }, h("a", { href: "/models" }, "Models"), " / ", m.name),
    h("h1", {}, `Model ${m.name}`, m.archived ? h("span", { class: "label" }, "archived") : null),
    h("div", { class: "panel" }, h("dl", { class: "facts" },
      fact("Description", m.description || "–"),
      fact("Versions", String(m.num_versions)),
      fact("Labels", m.labels.length ? m.labels.map((l) => h("span", { class: "label" }, l)) : "–"),
      fact("Created", fmtTime(m.creation_time)),
      fact("Updated", fmtTime(m.last_updated_time)),
      ...Object.entries(m.metadata).map(([k, v]) => fact(k, typeof v === "object" ? JSON.stringify(v) : String(v))),
    )),
    h("div", { class: "panel" }, h("h2", {}, "Versions"), h("div", { class: "table-wrap", id: "versions" },
      versions.length ? h("table", { class: "table" },
        h("thead", {}, h("tr", {}, ["Version", "Name", "Checkpoint", "Trial", "Steps", ...metricNames, "Comment", "Created", ""].map((x) => h("th", {}, x)))),
        h("tbody", {}, versions.slice().reverse().map((v) => h("tr", { "data-version": v.version },
          h("td", { class: "num" }, String(v.version)),
          h("td", {}, v.name || "–"),
          h("td", { class: "mono" }, v.checkpoint_uuid),
          h("td", {}, v.checkpoint ? h("a", { href: `/trials/${v.checkpoint.trial_id}` }, `trial ${v.checkpoint.trial_id}`) : "–"),
          h("td", { class: "num" }, v.checkpoint ? String(v.checkpoint.steps_completed) : "–"),
          metricNames.map((n) => h("td", { class: "num" }, fmtNum(v.checkpoint?.validation_metrics[n]))),
          h("td", {}, v.comment || ""),
          h("td", {}, fmtTime(v.creation_time)),
          h("td", {}, v.checkpoint && v.checkpoint.state !== "DELETED"
            ? h("a", { href: `${API}/checkpoints/${v.checkpoint_uuid}/download`, download: `${v.checkpoint_uuid}.tar` }, "download") : ""),
        )))) : h("div", { class: "empty" }, "No versions yet."))),
  );
}
