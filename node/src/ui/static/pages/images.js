// The images page: the images (disk, ISO, kernel, initrd) and where they
// are used, the upload form with its progress and cancel, and Delete.

import { get, del, enc, upload } from "/ui/api.js";
import { h, clear, bytes, when } from "/ui/dom.js";
import { flash, failed, act, confirmDialog, poller } from "/ui/shell.js";
import { renderRows, table, section, pageHead } from "/ui/widgets.js";

export function imagesPage(view) {
  const t = table("images-table", ["Name", "Kind", "Format", "Size", "File", "Storage", "Host", "Used by", "Added", ""]);
  const file = h("input", { id: "image-file", type: "file", required: true });
  const name = h("input", { id: "image-name", required: true, spellcheck: "false" });
  const storage = h("select", { id: "image-storage", required: true });
  const kind = h("select", { id: "image-kind" }, ["disk", "iso", "kernel", "initrd"].map((k) => h("option", { value: k }, k)));
  const submit = h("button", { id: "image-submit", type: "submit", class: "primary" }, "Upload");
  const cancel = h("button", { id: "image-cancel", type: "button", hidden: true }, "Cancel");
  const progress = h("progress", { id: "image-progress", max: "100", value: "0", hidden: true });
  const progressText = h("span", { id: "image-progress-text", class: "muted" });
  const f = h("form", { id: "image-form", class: "inline-form w" },
    h("label", null, "File ", file), h("label", null, "Name ", name), h("label", null, "Storage ", storage),
    h("label", null, "Kind ", kind), submit, cancel, progress, progressText);
  view.append(pageHead("Images"), section("Upload an image", f), section(null, t.table));

  get("/api/v1/storage").then((list) => {
    clear(storage);
    for (const s of list) storage.append(h("option", { value: s.name }, `${s.name} (${s.kind})`));
    if (!list.length) storage.append(h("option", { value: "" }, "(no storage domain)"));
  }).catch(failed);

  file.addEventListener("change", () => {
    const fl = file.files[0];
    if (!fl) return;
    if (!name.value) name.value = fl.name.toLowerCase().replace(/[^a-z0-9._-]+/g, "-").replace(/^[.-]+/, "").slice(0, 63);
    if (/\.iso$/i.test(fl.name)) kind.value = "iso";
  });

  let job = null;
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    const fl = file.files[0];
    if (!fl) { flash("Choose a file to upload."); return; }
    if (!name.value.trim()) { flash("The image needs a name."); return; }
    if (!storage.value) { flash("Choose a storage domain (add one on the Storage page)."); return; }
    const nm = name.value.trim();
    submit.disabled = true;
    cancel.hidden = false;
    progress.hidden = false;
    progress.value = 0;
    const started = Date.now();
    job = upload(`/api/v1/images/${enc(nm)}?storage=${enc(storage.value)}&kind=${enc(kind.value)}`, fl, (loaded, total) => {
      const pct = total ? (100 * loaded) / total : 0;
      progress.value = pct;
      const rate = loaded / Math.max(0.001, (Date.now() - started) / 1000);
      progressText.textContent = loaded >= total
        ? "Uploaded: the node is checking the image…"
        : `${pct.toFixed(0)}% (${bytes(loaded)} of ${bytes(total)}, ${bytes(rate)}/s)`;
    });
    try {
      const img = await job.promise;
      flash(`Image ${nm} uploaded${img && img.format ? ` (${img.format})` : ""}.`, "info");
      f.reset();
      progressText.textContent = "";
      refresh();
    } catch (err) {
      failed(err);
      progressText.textContent = "";
    } finally {
      job = null;
      submit.disabled = false;
      cancel.hidden = true;
      progress.hidden = true;
    }
  });
  cancel.addEventListener("click", () => job && job.abort());

  const refresh = poller(async () => {
    const list = await get("/api/v1/images");
    renderRows(t.tbody, list, (i) => h("tr", { dataset: { image: i.name } },
      h("td", { class: "name", title: `sha256 ${i.sha256}` }, i.name),
      h("td", null, i.kind),
      h("td", null, i.format),
      h("td", { class: "num" }, bytes(i.virtual_bytes)),
      h("td", { class: "num" }, bytes(i.file_bytes)),
      h("td", null, i.storage),
      h("td", null, i.host || ""),
      h("td", null, (i.used_by || []).join(", ")),
      h("td", null, when(i.created_at_ms)),
      h("td", { class: "actions" }, h("button", {
        type: "button", class: "small w danger", dataset: { act: "delete" }, disabled: (i.used_by || []).length > 0,
        onclick: async (e) => {
          const btn = e.currentTarget;
          const r = await confirmDialog(`Delete image ${i.name}?`, { okLabel: "Delete", danger: true });
          if (r.ok) act(btn, () => del(`/api/v1/images/${enc(i.name)}`), `Image ${i.name} deleted.`);
        },
      }, "Delete"))), "No images.", 10);
  }, 5000);
  return { refresh, dispose() { refresh.stop(); if (job) job.abort(); } };
}
