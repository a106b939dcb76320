// Renders /openapi without any third-party code, so /docs works offline and under a strict CSP.
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  children.forEach((c) => node.append(c));
  return node;
};

const resolve = (doc, schema) =>
  schema && schema.$ref ? doc.components.schemas[schema.$ref.split("/").pop()] : schema;

async function main() {
  const doc = await (await fetch("/openapi")).json();
  document.getElementById("title").textContent = `${doc.info.title} ${doc.info.version}`;
  document.getElementById("description").textContent = doc.info.description;
  const main = document.getElementById("operations");
  main.replaceChildren();
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const head = el("h3", op.deprecated ? { class: "deprecated" } : {},
        el("span", { class: `method ${method}` }, method), el("code", {}, path));
      const section = el("section", {}, head, el("p", {}, op.summary || ""));
      const body = op.requestBody && resolve(doc, op.requestBody.content["application/json"].schema);
      if (body) section.append(el("p", {}, "Request body:"), el("pre", {}, JSON.stringify(body, null, 2)));
      const codes = Object.entries(op.responses).map(([code, r]) => `${code}: ${r.description}`);
      section.append(el("p", {}, "Responses: " + codes.join(" · ")));
      main.append(section);
    }
  }
}

main().catch((err) => {
  document.getElementById("operations").textContent = `Could not load /openapi: ${err}`;
});
