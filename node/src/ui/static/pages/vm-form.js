// The New VM form, with the scheduler preview: while the form is filled in,
// the node is asked (explain) where it would place the VM, and the answer is
// shown as a table of hosts. explanationView also serves the migrate dialog.

import { get, post, put, enc } from "/ui/api.js";
import { h, clear, bytes, debounce } from "/ui/dom.js";
import { flash } from "/ui/shell.js";

export function explanationView(x) {
  const chosen = x.chosen
    ? h("p", { class: "chosen" }, "Would place on ", h("strong", { id: "vm-preview-chosen" }, x.chosen), ` (policy ${x.policy}).`)
    : h("p", { class: "error" }, `No host can take it (policy ${x.policy}).`);
  const rows = (x.nodes || []).slice().sort((a, b) => (b.chosen - a.chosen) || (b.feasible - a.feasible) || (b.score - a.score));
  const t = h("table", { class: "grid compact" },
    h("thead", null, h("tr", null, ["Host", "Fits", "Score", "Why"].map((c) => h("th", null, c)))),
    h("tbody", null, rows.map((n) => h("tr", { class: n.chosen ? "chosen" : n.feasible ? "" : "infeasible", dataset: { node: n.node } },
      h("td", null, n.node),
      h("td", null, n.feasible ? "yes" : "no"),
      h("td", { class: "num", title: `policy ${n.policy_score.toFixed(2)}, labels ${n.label_score.toFixed(2)}, groups ${n.group_score.toFixed(2)}` },
        n.feasible ? n.score.toFixed(2) : ""),
      h("td", null, n.reason)))));
  return h("div", null, chosen, t);
}

export function newVmForm(panel, existing, done) {
  const field = (label, input, hint) => h("div", { class: "field" }, h("label", { for: input.id }, label), input, hint ? h("small", { class: "muted" }, hint) : null);
  const name = h("input", { id: "vm-name", required: true, pattern: "[a-z0-9\\-]{1,63}", maxlength: "63", spellcheck: "false", placeholder: "web-1" });
  const vcpus = h("input", { id: "vm-vcpus", type: "number", min: "1", max: "256", value: "1", required: true });
  const memory = h("input", { id: "vm-memory", type: "number", min: "1", step: "1", value: "512", required: true });
  const ha = h("input", { id: "vm-ha", type: "checkbox" });
  const image = h("select", { id: "vm-image" }, h("option", { value: "" }, "(none)"));
  const diskGib = h("input", { id: "vm-disk-gib", type: "number", min: "0", value: "0" });
  const storage = h("select", { id: "vm-storage" }, h("option", { value: "" }, "(cluster default)"));
  const network = h("select", { id: "vm-network" }, h("option", { value: "" }, "(no NIC)"));
  const cdrom = h("select", { id: "vm-cdrom" }, h("option", { value: "" }, "(none)"));
  const kernel = h("select", { id: "vm-kernel" }, h("option", { value: "" }, "(boot from disk or CD-ROM)"));
  const initrd = h("select", { id: "vm-initrd" }, h("option", { value: "" }, "(none)"));
  const cmdline = h("input", { id: "vm-cmdline", spellcheck: "false", placeholder: "console=ttyS0" });
  const description = h("input", { id: "vm-description", maxlength: "200" });
  const error = h("p", { id: "vm-form-error", class: "error", hidden: true });
  const preview = h("div", { id: "vm-preview", class: "preview", dataset: { state: "idle" } }, h("span", { class: "muted" }, "Fill in the form to see where the scheduler would place it."));
  const submit = h("button", { id: "vm-submit", type: "submit", class: "primary" }, "Create VM");
  const cancel = h("button", { id: "vm-cancel", type: "button" }, "Cancel");
  const f = h("form", { id: "vm-form", class: "vm-form", novalidate: true },
    h("div", { class: "form-grid" },
      field("Name", name, "lower-case letters, digits and -"),
      field("vCPUs", vcpus),
      field("Memory (MiB)", memory),
      h("div", { class: "field" }, h("label", { class: "check", for: "vm-ha" }, ha, " Highly available (restart elsewhere if its host fails)")),
      field("Image (boot disk)", image, "optional"),
      field("Blank disk (GiB)", diskGib, "0: none"),
      field("Storage for the blank disk", storage),
      field("Network", network, "optional"),
      field("CD-ROM (ISO image)", cdrom, "to install from"),
      field("Kernel (direct boot)", kernel, "optional"),
      field("Initrd", initrd, "with the kernel"),
      field("Kernel command line", cmdline, "with the kernel"),
      field("Description", description)),
    h("div", { class: "buttons" }, cancel, submit), error);
  clear(panel).append(h("h2", null, "New VM"), h("div", { class: "two" }, f,
    h("div", null, h("h3", null, "Scheduler preview"), preview)));

  // Fill the selects from the API.
  get("/api/v1/images").then((list) => {
    const label = (i) => `${i.name} (${i.format}, ${bytes(i.virtual_bytes)}${i.host ? `, on ${i.host}` : ""})`;
    const into = { disk: image, iso: cdrom, kernel, initrd };
    for (const i of list) {
      const select = into[i.kind || "disk"];
      if (select) select.append(h("option", { value: i.name }, label(i)));
    }
  }).catch(() => {});
  get("/api/v1/storage").then((list) => {
    for (const s of list) storage.append(h("option", { value: s.name }, `${s.name} (${s.kind})`));
  }).catch(() => {});
  get("/api/v1/networks").then((list) => {
    for (const n of list) network.append(h("option", { value: n.name }, `${n.name} (${n.kind})`));
  }).catch(() => {});

  function spec() {
    const s = {
      vcpus: parseInt(vcpus.value, 10),
      memory_mib: parseInt(memory.value, 10),
      ha: ha.checked,
    };
    if (description.value.trim()) s.description = description.value.trim();
    if (image.value) s.image = image.value;
    const gib = parseFloat(diskGib.value || "0");
    if (gib > 0) s.disks = [{ size_bytes: Math.round(gib * 1024 * 1024 * 1024), storage: storage.value }];
    if (network.value) s.nics = [{ network: network.value }];
    if (cdrom.value) s.cdrom = cdrom.value;
    if (kernel.value) {
      s.kernel = kernel.value;
      if (initrd.value) s.initrd = initrd.value;
      if (cmdline.value.trim()) s.cmdline = cmdline.value.trim();
    }
    return s;
  }

  function problemOf() {
    const s = spec();
    if (!name.value.trim()) return "A name is needed.";
    if (!name.checkValidity()) return "The name takes 1-63 lower-case letters, digits and -.";
    if (!(s.vcpus >= 1)) return "vCPUs must be at least 1.";
    if (!(s.memory_mib >= 1)) return "Memory must be at least 1 MiB.";
    return null;
  }

  let seq = 0;
  const explain = debounce(async () => {
    const mine = ++seq;
    const s = spec();
    if (!(s.vcpus >= 1) || !(s.memory_mib >= 1)) {
      preview.dataset.state = "idle";
      clear(preview).append(h("span", { class: "muted" }, "vCPUs and memory are needed for a preview."));
      return;
    }
    preview.dataset.state = "loading";
    preview.classList.add("loading");
    const vmName = name.value.trim() && name.checkValidity() ? name.value.trim() : "new-vm";
    try {
      const x = await post(`/api/v1/vms/${enc(vmName)}/explain`, s);
      if (mine !== seq) return;
      clear(preview).append(explanationView(x));
      preview.dataset.state = "ready";
    } catch (e) {
      if (mine !== seq) return;
      clear(preview).append(h("p", { class: "error" }, e.message));
      preview.dataset.state = "error";
    } finally {
      if (mine === seq) preview.classList.remove("loading");
    }
  }, 350);
  for (const el of [name, vcpus, memory, ha, image, diskGib, storage, network, cdrom, kernel, initrd, cmdline]) {
    el.addEventListener("input", explain);
    el.addEventListener("change", explain);
  }
  explain();

  cancel.addEventListener("click", () => { explain.cancel(); seq++; done(); });
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    const p = problemOf();
    error.hidden = !p;
    error.textContent = p || "";
    if (p) return;
    const vmName = name.value.trim();
    if (existing().some((v) => v.name === vmName)) {
      error.hidden = false;
      error.textContent = `A VM named ${vmName} exists already.`;
      return;
    }
    submit.disabled = true;
    submit.textContent = "Creating…";
    try {
      const vm = await put(`/api/v1/vms/${enc(vmName)}`, spec());
      explain.cancel();
      seq++;
      flash(`VM ${vmName} created${vm && vm.node ? ` on ${vm.node}` : ""}.`, "info");
      done();
    } catch (err) {
      error.hidden = false;
      error.textContent = err.message;
      submit.disabled = false;
      submit.textContent = "Create VM";
    }
  });
  return { dispose() { explain.cancel(); seq++; } };
}
