// Safe DOM building for every page: data only ever becomes text nodes and attribute values,
// never markup (the console's CSP enforces Trusted Types, so an HTML string sink would throw).

const SVG_NS = "http://www.w3.org/2000/svg";
// Set as properties (live state), not attributes.
const PROPERTIES = new Set(["value", "checked", "disabled", "selected", "hidden", "readOnly"]);

function setAll(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) {
      // Handlers are functions only: a string would be inline script (and CSP refuses it).
      if (typeof value !== "function") throw new TypeError(`${name} must be a function`);
      node.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else if (PROPERTIES.has(name)) {
      node[name] = value;
    } else {
      const text = value === true ? "" : String(value);
      if ((name === "href" || name === "src") && /^\s*javascript:/i.test(text)) {
        throw new TypeError(`refusing a javascript: URL in ${name}`);
      }
      node.setAttribute(name, text);
    }
  }
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
}

/** An HTML element: `attrs` via setAttribute/properties/listeners, children as nodes or text. */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAll(node, attrs);
  append(node, children);
  return node;
}

/** The same for SVG elements (charts): `svg("rect", {x: 0, width: 10})`. */
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAll(node, attrs);
  append(node, children);
  return node;
}

/** A text node: whatever `s` holds is shown, never parsed. */
export function text(s) {
  return document.createTextNode(s === null || s === undefined ? "" : String(s));
}

/** Remove every child of `node`. */
export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}
