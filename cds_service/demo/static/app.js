// The demo EHR's order-entry screen: patient, orders, CDS Hooks cards, and the exchanges behind them.
import {
  acceptedFeedback,
  applyActions,
  buildHookRequest,
  codeSummary,
  conceptText,
  diagnosticsOf,
  orderConcept,
  overriddenFeedback,
  prefetchFor,
  ratingsFrom,
  refOf,
  templateType,
} from "./cds.js";
import { renderMarkdown, safeUrl } from "./markdown.js";

// Icons are drawn, not font glyphs: a missing glyph must never hide how urgent a card is.
const INDICATORS = {
  critical: { rank: 0, shape: "polygon", points: "6,1 14,1 19,6 19,14 14,19 6,19 1,14 1,6", mark: "!", label: "Critical" },
  warning: { rank: 1, shape: "polygon", points: "10,1 19.5,18.5 0.5,18.5", mark: "!", label: "Warning" },
  info: { rank: 2, shape: "circle", mark: "i", label: "Info" },
};
const SVG_NS = "http://www.w3.org/2000/svg";

function indicatorIcon(indicator) {
  const svg = document.createElementNS(SVG_NS, "svg");
  for (const [name, value] of Object.entries({ viewBox: "0 0 20 20", width: "22", height: "22", "aria-hidden": "true", class: "indicator-icon" })) {
    svg.setAttribute(name, value);
  }
  const shape = document.createElementNS(SVG_NS, indicator.shape ?? "circle");
  if (indicator.shape === "polygon") shape.setAttribute("points", indicator.points);
  else for (const [name, value] of Object.entries({ cx: "10", cy: "10", r: "9.5" })) shape.setAttribute(name, value);
  shape.setAttribute("fill", "currentColor");
  const mark = document.createElementNS(SVG_NS, "text");
  for (const [name, value] of Object.entries({ x: "10", y: indicator.mark === "i" ? "15" : "16", "text-anchor": "middle", "font-size": "13", "font-weight": "700", fill: "#fff" })) {
    mark.setAttribute(name, value);
  }
  mark.textContent = indicator.mark ?? "?";
  svg.append(shape, mark);
  return svg;
}
const MAX_EXCHANGES = 25;
const DEMO_USER = "Practitioner/demo-clinician";

const state = {
  services: { select: null, sign: null },
  patients: [],
  orderables: [],
  source: "bundled",
  patient: null, // {key, label, tryThis, patientId, userId, encounterId, prefetch, orderReason}
  fhir: null, // {server, token} in FHIR-server mode
  record: { byType: {}, unavailable: {} },
  reasons: [],
  basket: [], // [{resource, selected}]
  ratings: new Map(),
  pending: false,
  cards: [],
  cardsHook: null,
  seq: 0,
  nextId: 1,
  signed: [],
  signPending: false,
  exchanges: [],
  exchangeCount: 0,
  error: null,
};

// ---------------------------------------------------------------- helpers

const $ = (id) => document.getElementById(id);

/** Create an element: el("p", {class: "x", text: "y", dataset: {...}, attrs: {...}, on: {...}}, ...children). */
function el(tag, options = {}, ...children) {
  const node = document.createElement(tag);
  if (options.class) node.className = options.class;
  if (options.text !== undefined) node.textContent = options.text;
  for (const [key, value] of Object.entries(options.dataset ?? {})) node.dataset[key] = value;
  for (const [key, value] of Object.entries(options.attrs ?? {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const [event, handler] of Object.entries(options.on ?? {})) node.addEventListener(event, handler);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const MAX_ACTIVITY = 4;

/** Add a line to the activity log (a polite live region: screen readers hear each new line). */
function announce(text) {
  if (!text) return;
  const log = $("activity");
  log.prepend(el("li", { text }));
  while (log.children.length > MAX_ACTIVITY) log.lastElementChild.remove();
}

function ageYears(birthDate, today = new Date()) {
  const [year, month, day] = String(birthDate).split("-").map(Number);
  if (!year) return null;
  let age = today.getUTCFullYear() - year;
  const monthNow = today.getUTCMonth() + 1;
  if (month && (monthNow < month || (monthNow === month && day && today.getUTCDate() < day))) age -= 1;
  return age;
}

function nameOf(patient) {
  const name = patient?.name?.find((n) => n.use === "official") ?? patient?.name?.[0];
  if (!name) return "Unnamed patient";
  return name.text ?? [...(name.given ?? []), name.family].filter(Boolean).join(" ");
}

function dateOnly(value) {
  return typeof value === "string" ? value.slice(0, 10) : "";
}

function periodText(period) {
  if (!period) return "";
  const start = dateOnly(period.start);
  const end = dateOnly(period.end);
  if (start && end) return `${start} to ${end}`;
  return start ? `from ${start}` : end ? `until ${end}` : "";
}

function statusCode(concept) {
  return concept?.coding?.[0]?.code ?? concept?.text ?? "";
}

// ---------------------------------------------------------------- service calls

/** POST JSON, record the exchange for the panel, and return {ok, status, json, text, ms, failure}. */
async function post(url, body, label) {
  const requestText = JSON.stringify(body, null, 2);
  const exchange = { id: ++state.exchangeCount, label, method: "POST", url, requestText, status: null };
  state.exchanges.unshift(exchange);
  state.exchanges.length = Math.min(state.exchanges.length, MAX_EXCHANGES);
  renderExchanges();
  const started = performance.now();
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: requestText,
    });
    const text = await response.text();
    exchange.ms = Math.round(performance.now() - started);
    exchange.status = response.status;
    exchange.statusText = response.statusText;
    exchange.responseText = text;
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    renderExchanges();
    return { ok: response.ok, status: response.status, statusText: response.statusText, json, text, ms: exchange.ms, exchange };
  } catch (failure) {
    exchange.ms = Math.round(performance.now() - started);
    exchange.status = 0;
    exchange.statusText = "no response";
    exchange.responseText = String(failure);
    renderExchanges();
    return { ok: false, status: 0, failure: String(failure), ms: exchange.ms, exchange };
  }
}

function errorMessage(result, what) {
  if (result.status === 0) return `${what}: the service could not be reached (${result.failure}).`;
  const diagnostics = diagnosticsOf(result.json);
  const status = `${result.status}${result.statusText ? ` ${result.statusText}` : ""}`;
  return diagnostics ? `${what}: the service answered ${status}: ${diagnostics}` : `${what}: the service answered ${status}.`;
}

function patientContext() {
  return {
    patientId: state.patient.patientId,
    userId: state.patient.userId ?? DEMO_USER,
    encounterId: state.patient.encounterId,
  };
}

function prefetchToSend(service) {
  if (state.fhir) return null; // the service fetches the record itself
  return prefetchFor(service.prefetch ?? {}, state.patient.prefetch);
}

/** Call a hook with the current basket; stale answers (the basket changed meanwhile) are ignored. */
async function callHook(hook) {
  const service = hook === "order-sign" ? state.services.sign : state.services.select;
  if (!service) {
    showError(`No ${hook} service in the discovery document.`);
    return null;
  }
  const seq = ++state.seq;
  const body = buildHookRequest({
    hook,
    basket: state.basket,
    patient: patientContext(),
    prefetch: prefetchToSend(service),
    fhir: state.fhir,
  });
  state.pending = true;
  announce(`Calling ${hook}…`);
  renderBasket();
  const result = await post(`/cds-services/${encodeURIComponent(service.id)}`, body, hook);
  if (seq !== state.seq) {
    result.exchange.superseded = true;
    renderExchanges();
    return null; // a newer call is on its way: its answer replaces everything
  }
  state.pending = false;
  // Every answer replaces the previous cards and ratings: nothing stale stays on screen.
  state.cardsHook = hook;
  if (result.ok && result.json && Array.isArray(result.json.cards)) {
    state.cards = result.json.cards.map((card, index) => ({ card, key: `${seq}-${index}`, service }));
    state.ratings = ratingsFrom(result.json);
    clearError();
    const count = state.cards.length;
    announce(`${hook}: ${count} card${count === 1 ? "" : "s"}, ${state.ratings.size} rating${state.ratings.size === 1 ? "" : "s"} (${result.ms} ms).`);
  } else {
    state.cards = [];
    state.ratings = new Map();
    showError(errorMessage(result, hook === "order-sign" ? "Signing" : "Decision support"));
    announce(`${hook} failed (${result.ms} ms).`);
  }
  renderBasket();
  renderCards();
  return result;
}

async function postFeedback(service, body) {
  const result = await post(`/cds-services/${encodeURIComponent(service.id)}/feedback`, body, "feedback");
  if (!result.ok) showError(errorMessage(result, "Feedback"));
  return result;
}

// ---------------------------------------------------------------- actions

async function fireSelect() {
  state.signPending = false;
  $("sign-anyway").hidden = true;
  if (!state.basket.some((order) => order.selected)) {
    state.seq += 1; // any call in flight is now stale
    state.pending = false;
    state.cards = [];
    state.ratings = new Map();
    state.cardsHook = null;
    clearError();
    if (state.basket.length) announce("No order selected: tick a draft order to ask the service.");
    renderBasket();
    renderCards();
    return;
  }
  await callHook("order-select");
}

function newOrderId() {
  const id = `draft-${state.nextId}`;
  state.nextId += 1;
  return id;
}

function addOrder(orderable) {
  const resource = structuredClone(orderable.resource);
  resource.id = newOrderId();
  resource.subject = { reference: `Patient/${state.patient.patientId}` };
  if (state.patient.encounterId) resource.encounter = { reference: `Encounter/${state.patient.encounterId}` };
  resource.authoredOn = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  resource.requester = { reference: state.patient.userId ?? DEMO_USER };
  const reason = state.reasons[Number($("reason-select").value)];
  if (reason) resource.reasonCode = [structuredClone(reason.concept)];
  // order-select's selections are the newly selected orders; earlier drafts stay in draftOrders as context.
  for (const order of state.basket) order.selected = false;
  state.basket.push({ resource, selected: true });
  announce(`Added ${conceptText(orderConcept(resource))}.`);
  renderBasket();
  fireSelect();
}

function removeOrder(ref) {
  state.basket = state.basket.filter((order) => refOf(order.resource) !== ref);
  renderBasket();
  fireSelect();
}

async function acceptSuggestion(entry, suggestion) {
  const { card, service } = entry;
  const before = new Set(state.basket.map((order) => refOf(order.resource)));
  const { basket, notes } = applyActions(state.basket, suggestion.actions, newOrderId);
  const created = basket.filter((order) => !before.has(refOf(order.resource)));
  if (created.length) for (const order of basket) order.selected = created.includes(order);
  state.basket = basket;
  state.cards = state.cards.filter((item) => item !== entry);
  announce(`Accepted "${suggestion.label}": ${notes.join("; ") || "no change to the orders"}.`);
  renderBasket();
  renderCards();
  $("cards-heading").focus();
  if (card.uuid && suggestion.uuid) {
    await postFeedback(service, acceptedFeedback(card, suggestion));
  } else {
    announce(`Accepted "${suggestion.label}" (no feedback sent: the card or suggestion has no uuid).`);
  }
  await fireSelect();
}

async function dismissCard(entry, reason, comment) {
  const { card, service } = entry;
  state.cards = state.cards.filter((item) => item !== entry);
  renderCards();
  $("cards-heading").focus();
  if (!card.uuid) {
    announce("Card dismissed (no feedback sent: the card has no uuid).");
    return;
  }
  const result = await postFeedback(service, overriddenFeedback(card, reason, comment));
  if (result.ok) announce(`Card dismissed${reason ? `: ${reason.display ?? reason.code}` : ""}. Feedback sent.`);
}

async function sign() {
  if (!state.basket.length) return;
  const result = await callHook("order-sign");
  if (!result || !result.ok) return;
  if (state.cards.length === 0) {
    finishSigning();
  } else {
    state.signPending = true;
    $("sign-anyway").hidden = false;
    announce(`order-sign returned ${state.cards.length} card${state.cards.length === 1 ? "" : "s"}: act on them, or sign anyway.`);
  }
}

function finishSigning() {
  for (const order of state.basket) {
    const ref = refOf(order.resource);
    state.signed.push({ resource: order.resource, rating: state.ratings.get(ref) ?? null });
  }
  const count = state.basket.length;
  state.basket = [];
  state.cards = [];
  state.ratings = new Map();
  state.signPending = false;
  state.seq += 1;
  $("sign-anyway").hidden = true;
  announce(`Signed ${count} order${count === 1 ? "" : "s"}.`);
  renderBasket();
  renderCards();
  renderSigned();
}

// ---------------------------------------------------------------- patient

function recordFromPrefetch(prefetch, templates) {
  const byType = {};
  const unavailable = {};
  for (const [key, template] of Object.entries(templates)) {
    const type = templateType(template) ?? key;
    if (!prefetch || !Object.prototype.hasOwnProperty.call(prefetch, key)) {
      unavailable[type] = "not sent by the EHR";
      continue;
    }
    const value = prefetch[key];
    if (value === null) continue;
    if (value.resourceType === "OperationOutcome") {
      unavailable[type] = diagnosticsOf(value) ?? "the EHR could not provide it";
      continue;
    }
    const resources = value.resourceType === "Bundle" ? (value.entry ?? []).map((e) => e.resource).filter(Boolean) : [value];
    for (const resource of resources) (byType[resource.resourceType] ??= []).push(resource);
  }
  return { byType, unavailable };
}

function reasonsFor(patient, record) {
  const reasons = [];
  for (const concept of patient?.orderReason ?? []) reasons.push({ label: `${conceptText(concept)} (this visit)`, concept });
  for (const condition of record.byType.Condition ?? []) {
    const verification = statusCode(condition.verificationStatus);
    if (!condition.code || ["entered-in-error", "refuted"].includes(verification)) continue;
    const concept = { coding: condition.code.coding, text: condition.code.text };
    if (reasons.some((reason) => JSON.stringify(reason.concept.coding) === JSON.stringify(concept.coding))) continue;
    reasons.push({ label: conceptText(concept), concept });
  }
  return reasons;
}

function resetOrders() {
  state.basket = [];
  state.signed = [];
  state.cards = [];
  state.ratings = new Map();
  state.signPending = false;
  state.seq += 1;
  state.pending = false;
  $("sign-anyway").hidden = true;
  clearError();
  $("activity").replaceChildren();
}

function selectBundledPatient(key) {
  const entry = state.patients.find((patient) => patient.key === key) ?? state.patients[0];
  if (!entry) return;
  state.patient = entry;
  state.fhir = null;
  state.record = recordFromPrefetch(entry.prefetch, state.services.select?.prefetch ?? {});
  state.reasons = reasonsFor(entry, state.record);
  resetOrders();
  renderPatient();
  renderBasket();
  renderCards();
  renderSigned();
}

async function loadFhirPatient(server, patientId, token) {
  state.patient = { key: "fhir", patientId, userId: DEMO_USER };
  state.fhir = { server, token: token || null };
  state.record = { byType: {}, unavailable: {} };
  state.reasons = [];
  resetOrders();
  renderPatient();
  announce("Reading the record through the service…");
  const result = await post("/demo/api/record", { fhirServer: server, patientId, accessToken: token || undefined }, "record");
  if (result.ok && result.json) {
    state.record = { byType: result.json.resources ?? {}, unavailable: result.json.unavailable ?? {} };
    state.reasons = reasonsFor(null, state.record);
    announce("Record read. Orders are sent with fhirServer and no prefetch: the service fetches what it needs.");
  } else {
    // Orders can still be placed: the service will answer for itself (and say what it could not read).
    showError(errorMessage(result, "Reading the record"));
  }
  renderPatient();
  renderBasket();
  renderCards();
}

// ---------------------------------------------------------------- rendering

function showError(text) {
  state.error = text;
  const box = $("error");
  box.replaceChildren(el("strong", { text: "Error. " }), document.createTextNode(text));
  box.hidden = false;
}

function clearError() {
  state.error = null;
  $("error").hidden = true;
  $("error").replaceChildren();
}

function renderPatient() {
  const banner = $("banner");
  const patientResource = state.record.byType.Patient?.[0] ?? null;
  const rows = [];
  if (patientResource) {
    const age = ageYears(patientResource.birthDate);
    const sex = patientResource.gender ?? "sex unknown";
    const mrn = patientResource.identifier?.find((id) => id.type?.coding?.some((c) => c.code === "MR"))?.value;
    rows.push(
      el("p", { class: "banner-name", text: nameOf(patientResource) }),
      el(
        "p",
        { class: "banner-facts" },
        el("span", { text: age === null ? "age unknown" : `${age} y`, dataset: { field: "age" } }),
        el("span", { text: sex, dataset: { field: "sex" } }),
        patientResource.birthDate ? el("span", { text: `born ${patientResource.birthDate}` }) : null,
        mrn ? el("span", { text: `MRN ${mrn}` }) : null,
      ),
    );
  } else {
    const why = state.record.unavailable.Patient;
    rows.push(el("p", { class: "banner-name", text: `Patient/${state.patient?.patientId ?? "?"}` }));
    rows.push(el("p", { class: "banner-facts muted", text: why ? `Demographics not available: ${why}.` : "No demographics." }));
  }
  if (state.fhir) rows.push(el("p", { class: "small muted", text: `Record on ${state.fhir.server}` }));
  if (state.patient?.tryThis) rows.push(el("p", { class: "small try" }, el("strong", { text: "Try: " }), state.patient.tryThis));
  banner.replaceChildren(...rows);

  const reasonSelect = $("reason-select");
  reasonSelect.replaceChildren(
    ...state.reasons.map((reason, index) => el("option", { text: reason.label, attrs: { value: String(index) } })),
    el("option", { text: "No reason given", attrs: { value: "-1" } }),
  );
  reasonSelect.value = state.reasons.length ? "0" : "-1";

  renderRecordList($("problems"), ["Condition"], conditionItem, "No problems on the list.");
  renderRecordList($("medications"), ["MedicationRequest", "MedicationStatement"], medicationItem, "No medications on the list.");
  renderRecordList(
    $("other"),
    ["Procedure", "Observation", "AllergyIntolerance", "Device", "ServiceRequest", "DiagnosticReport", "ImagingStudy"],
    otherItem,
    "Nothing else on record.",
  );
}

function renderRecordList(list, types, render, emptyText) {
  const items = [];
  for (const type of types) {
    if (state.record.unavailable[type]) {
      items.push(el("li", { class: "unavailable", text: `${type}: unknown (${state.record.unavailable[type]})` }));
    }
    for (const resource of state.record.byType[type] ?? []) items.push(render(resource));
  }
  if (!items.length) items.push(el("li", { class: "muted", text: emptyText }));
  list.replaceChildren(...items);
}

function conditionItem(condition) {
  const verification = statusCode(condition.verificationStatus);
  const onset = dateOnly(condition.onsetDateTime ?? condition.onsetPeriod?.start ?? condition.recordedDate);
  const meta = [statusCode(condition.clinicalStatus), onset && `since ${onset}`, codeSummary(condition.code)]
    .filter(Boolean)
    .join(" · ");
  const struck = ["entered-in-error", "refuted"].includes(verification);
  return el(
    "li",
    { class: struck ? "struck" : "" },
    el("span", { text: conceptText(condition.code) || "Condition without a code" }),
    struck ? el("span", { class: "tag", text: verification }) : null,
    el("span", { class: "meta", text: meta }),
  );
}

function medicationItem(resource) {
  const concept = resource.medicationCodeableConcept ?? (resource.medicationReference ? { text: resource.medicationReference.display ?? resource.medicationReference.reference } : null);
  const supply = resource.dispenseRequest?.expectedSupplyDuration;
  const when =
    periodText(resource.effectivePeriod) ||
    dateOnly(resource.effectiveDateTime) ||
    [dateOnly(resource.authoredOn), supply?.value ? `${supply.value} ${supply.unit ?? "days"} supply` : ""]
      .filter(Boolean)
      .join(", ");
  const dosage = (resource.dosageInstruction ?? resource.dosage ?? []).map((d) => d.text).filter(Boolean).join("; ");
  const kind = resource.resourceType === "MedicationStatement" ? "statement" : "order";
  const meta = [resource.status, kind, when].filter(Boolean).join(" · ");
  return el(
    "li",
    {},
    el("span", { text: conceptText(concept) || "Medication" }),
    el("span", { class: "meta", text: meta }),
    dosage ? el("span", { class: "meta", text: dosage }) : null,
  );
}

function otherItem(resource) {
  let text = "";
  let meta = "";
  switch (resource.resourceType) {
    case "Procedure":
      text = conceptText(resource.code);
      meta = dateOnly(resource.performedDateTime ?? resource.performedPeriod?.start);
      break;
    case "Observation": {
      const value = resource.valueQuantity
        ? `${resource.valueQuantity.value} ${resource.valueQuantity.unit ?? resource.valueQuantity.code ?? ""}`.trim()
        : conceptText(resource.valueCodeableConcept) || resource.valueString || "";
      text = `${conceptText(resource.code)}${value ? `: ${value}` : ""}`;
      meta = dateOnly(resource.effectiveDateTime ?? resource.issued);
      break;
    }
    case "AllergyIntolerance":
      text = `Allergy: ${conceptText(resource.code)}`;
      meta = statusCode(resource.clinicalStatus);
      break;
    case "Device":
      text = `Device: ${conceptText(resource.type) || resource.deviceName?.[0]?.name || ""}`;
      meta = resource.status ?? "";
      break;
    case "ImagingStudy":
      text = resource.description ?? "Imaging study";
      meta = dateOnly(resource.started);
      break;
    default:
      text = conceptText(resource.code);
      meta = [resource.status, dateOnly(resource.effectiveDateTime ?? resource.authoredOn ?? resource.issued)].filter(Boolean).join(" · ");
  }
  return el(
    "li",
    {},
    el("span", { text: text || resource.resourceType }),
    el("span", { class: "meta", text: [resource.resourceType, meta].filter(Boolean).join(" · ") }),
  );
}

function orderableText(orderable) {
  const concept = orderable.resource.code ?? orderable.resource.medicationCodeableConcept;
  return [orderable.label, orderable.group, codeSummary(concept), ...(orderable.keywords ?? [])].join(" ").toLowerCase();
}

function renderResults() {
  const query = $("search").value.trim().toLowerCase();
  const words = query.split(/\s+/).filter(Boolean);
  const matches = state.orderables.filter((orderable) => {
    const text = orderableText(orderable);
    return words.every((word) => text.includes(word));
  });
  $("search-count").textContent = query ? `${matches.length} match${matches.length === 1 ? "" : "es"}` : `${matches.length} orderables`;
  $("results").replaceChildren(
    ...matches.map((orderable) => {
      const concept = orderable.resource.code ?? orderable.resource.medicationCodeableConcept;
      const codes = codeSummary(concept);
      return el(
        "li",
        {},
        el(
          "button",
          {
            class: "result",
            attrs: { type: "button", "aria-label": `Add ${orderable.label}${codes ? ` (${codes})` : ""}` },
            dataset: { orderable: orderable.id },
            on: { click: () => addOrder(orderable) },
          },
          el("span", { class: "result-label", text: orderable.label }),
          el("span", { class: "meta", text: [orderable.group, codes].filter(Boolean).join(" · ") }),
          el("span", { class: "add", text: "Add", attrs: { "aria-hidden": "true" } }),
        ),
      );
    }),
  );
}

function badgeFor(ref) {
  const rating = state.ratings.get(ref);
  if (!rating) return null;
  const title = [rating.consultId && `consult id ${rating.consultId}`, rating.aucApplied && `AUC ${rating.aucApplied}`]
    .filter(Boolean)
    .join("; ");
  return el(
    "span",
    {
      class: `badge badge--${rating.code}${state.pending ? " stale" : ""}`,
      dataset: { rating: rating.code },
      attrs: { title: title || undefined },
    },
    el("span", { class: "sr-only", text: "PAMA rating: " }),
    rating.label,
    rating.category ? el("span", { class: "badge-category", text: ` (${rating.category.toLowerCase()})` }) : null,
  );
}

function codesOf(resource) {
  return (orderConcept(resource)?.coding ?? []).map((coding) => coding.code).filter(Boolean);
}

function renderBasket() {
  const list = $("basket");
  list.replaceChildren(
    ...state.basket.map((order) => {
      const ref = refOf(order.resource);
      const concept = orderConcept(order.resource);
      const name = conceptText(concept) || ref;
      const checkboxId = `sel-${order.resource.id}`;
      const checkbox = el("input", {
        attrs: { type: "checkbox", id: checkboxId, checked: order.selected },
        on: {
          change: (event) => {
            order.selected = event.target.checked;
            fireSelect();
          },
        },
      });
      const priority = order.resource.priority && order.resource.priority !== "routine" ? order.resource.priority : null;
      return el(
        "li",
        { class: `order${order.selected ? " selected" : ""}`, dataset: { ref, codes: codesOf(order.resource).join(" ") } },
        el(
          "div",
          { class: "order-main" },
          checkbox,
          el(
            "label",
            { attrs: { for: checkboxId } },
            el("span", { class: "order-name", text: name }),
            el("span", { class: "sr-only", text: " (selected for decision support)" }),
          ),
        ),
        el("button", {
          class: "link-button order-remove",
          text: "Remove",
          attrs: { type: "button", "aria-label": `Remove ${name}` },
          on: { click: () => removeOrder(ref) },
        }),
        el(
          "div",
          { class: "order-meta" },
          priority ? el("span", { class: `tag tag--${priority}`, text: priority }) : null,
          el("span", { class: "meta", text: [codeSummary(concept), ref].filter(Boolean).join(" · ") }),
          badgeFor(ref),
        ),
      );
    }),
  );
  $("basket-empty").hidden = state.basket.length > 0;
  const signButton = $("sign");
  signButton.disabled = state.basket.length === 0;
  signButton.textContent = state.basket.length ? `Sign ${state.basket.length} order${state.basket.length === 1 ? "" : "s"}` : "Sign orders";
}

function renderSigned() {
  $("signed").hidden = state.signed.length === 0;
  $("signed-list").replaceChildren(
    ...state.signed.map(({ resource, rating }) => {
      const concept = orderConcept(resource);
      return el(
        "li",
        { class: "order signed", dataset: { ref: refOf(resource), codes: codesOf(resource).join(" ") } },
        el("span", { class: "order-name", text: conceptText(concept) }),
        el("span", { class: "meta", text: codeSummary(concept) }),
        rating
          ? el("span", { class: `badge badge--${rating.code}`, dataset: { rating: rating.code }, text: `${rating.label}${rating.consultId ? ` · ${rating.consultId}` : ""}` })
          : null,
      );
    }),
  );
}

function renderCards() {
  const container = $("cards");
  const entries = [...state.cards].sort(
    (a, b) => (INDICATORS[a.card.indicator]?.rank ?? 3) - (INDICATORS[b.card.indicator]?.rank ?? 3),
  );
  if (!entries.length) {
    const text = state.cardsHook && !state.error ? `No cards from ${state.cardsHook}.` : "";
    container.replaceChildren(text ? el("p", { class: "muted", text }) : "");
    return;
  }
  container.replaceChildren(...entries.map(renderCard));
}

function renderCard(entry) {
  const { card, key } = entry;
  const indicator = INDICATORS[card.indicator] ?? { mark: "?", label: card.indicator };
  const summaryId = `card-${key}-summary`;
  const article = el("article", {
    class: `card card--${card.indicator}`,
    attrs: { "aria-labelledby": summaryId },
    dataset: { indicator: card.indicator, cardUuid: card.uuid ?? "", hook: state.cardsHook ?? "" },
  });
  article.append(
    el(
      "header",
      { class: "card-header" },
      indicatorIcon(indicator),
      el("h3", { class: "card-summary", attrs: { id: summaryId } }, el("span", { class: "indicator-label", text: `${indicator.label}: ` }), card.summary),
    ),
  );
  if (card.detail) {
    const detail = el("div", { class: "card-detail" });
    detail.append(renderMarkdown(card.detail));
    article.append(detail);
  }
  if (card.suggestions?.length) {
    const group = el("div", {
      class: "suggestions",
      attrs: { role: "group", "aria-label": `Suggestions (${card.selectionBehavior === "any" ? "choose any" : "choose one at most"})` },
    });
    for (const suggestion of card.suggestions) {
      group.append(
        el(
          "button",
          {
            class: `suggestion${suggestion.isRecommended ? " recommended" : ""}`,
            attrs: { type: "button", title: (suggestion.actions ?? []).map((a) => a.description).filter(Boolean).join("\n") || undefined },
            dataset: { suggestionUuid: suggestion.uuid ?? "" },
            on: { click: () => acceptSuggestion(entry, suggestion) },
          },
          suggestion.label,
          suggestion.isRecommended ? el("span", { class: "recommended-tag", text: " (recommended)" }) : null,
        ),
      );
    }
    article.append(group);
  }
  const links = (card.links ?? []).filter((link) => safeUrl(link.url));
  if (links.length) {
    article.append(
      el(
        "ul",
        { class: "card-links", attrs: { "aria-label": "Links" } },
        links.map((link) =>
          el(
            "li",
            {},
            link.type === "smart"
              ? el("span", { text: `${link.label} (SMART app: not launched by this demo)` })
              : el("a", { text: link.label, attrs: { href: safeUrl(link.url), target: "_blank", rel: "noopener noreferrer" } }),
          ),
        ),
      ),
    );
  }
  const source = card.source ?? {};
  const sourceUrl = source.url ? safeUrl(source.url) : null;
  article.append(
    el(
      "p",
      { class: "card-source" },
      "Source: ",
      sourceUrl ? el("a", { text: source.label, attrs: { href: sourceUrl, target: "_blank", rel: "noopener noreferrer" } }) : source.label ?? "unknown",
      source.topic?.display ? ` · ${source.topic.display}` : "",
    ),
  );
  const dismiss = el("button", { class: "dismiss", text: "Dismiss…", attrs: { type: "button", "aria-expanded": "false" } });
  const form = overrideForm(entry, dismiss);
  dismiss.addEventListener("click", () => {
    const open = form.hidden;
    form.hidden = !open;
    dismiss.setAttribute("aria-expanded", String(open));
    if (open) form.querySelector("input, textarea")?.focus();
  });
  article.append(el("div", { class: "card-actions" }, dismiss), form);
  return article;
}

function overrideForm(entry, dismissButton) {
  const { card, key } = entry;
  const reasons = card.overrideReasons ?? [];
  const name = `override-${key}`;
  const form = el("form", { class: "override", attrs: { "aria-label": "Dismiss this card", hidden: true } });
  const fieldset = el("fieldset", {}, el("legend", { text: reasons.length ? "Reason for dismissing" : "Dismiss this card" }));
  reasons.forEach((reason, index) => {
    const id = `${name}-${index}`;
    fieldset.append(
      el(
        "div",
        { class: "radio" },
        el("input", { attrs: { type: "radio", name, id, value: String(index) }, dataset: { code: reason.code } }),
        el("label", { attrs: { for: id }, text: reason.display ?? reason.code }),
      ),
    );
  });
  const commentId = `${name}-comment`;
  fieldset.append(
    el("label", { attrs: { for: commentId }, text: "Comment (optional)" }),
    el("textarea", { attrs: { id: commentId, rows: "2", maxlength: "500" } }),
  );
  const close = () => {
    form.hidden = true;
    dismissButton.setAttribute("aria-expanded", "false");
    dismissButton.focus();
  };
  form.append(
    fieldset,
    el(
      "div",
      { class: "form-buttons" },
      el("button", { class: "primary", text: "Dismiss card", attrs: { type: "submit" } }),
      el("button", { text: "Cancel", attrs: { type: "button" }, on: { click: close } }),
    ),
  );
  form.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = form.querySelector(`input[name="${name}"]:checked`);
    const reason = chosen ? reasons[Number(chosen.value)] : null;
    const comment = form.querySelector("textarea").value;
    dismissCard(entry, reason, comment);
  });
  return form;
}

function renderExchanges() {
  const raw = $("raw-toggle").checked;
  const pretty = (text) => {
    if (raw || !text) return text ?? "";
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      return text;
    }
  };
  $("exchanges").replaceChildren(
    ...state.exchanges.map((exchange, index) => {
      const path = exchange.url;
      const outcome =
        exchange.status === null
          ? "waiting…"
          : `${exchange.status || "no response"} ${exchange.statusText ?? ""} in ${exchange.ms} ms${exchange.superseded ? " (superseded by a newer call)" : ""}`;
      return el(
        "li",
        { class: "exchange", dataset: { label: exchange.label, status: String(exchange.status ?? "") } },
        el(
          "details",
          { attrs: { open: index === 0 } },
          el("summary", {}, el("strong", { text: exchange.label }), ` ${exchange.method} ${path} → `, el("span", { class: "exchange-outcome", text: outcome })),
          el("h3", { class: "small", text: "Request" }),
          el("pre", { class: "json request", attrs: { tabindex: "0", "aria-label": `${exchange.label} request JSON` }, text: exchange.requestText }),
          el("h3", { class: "small", text: "Response" }),
          el("pre", {
            class: "json response",
            attrs: { tabindex: "0", "aria-label": `${exchange.label} response JSON` },
            text: exchange.responseText === undefined ? "" : pretty(exchange.responseText),
          }),
        ),
      );
    }),
  );
}

// ---------------------------------------------------------------- start-up

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  return response.json();
}

async function start() {
  try {
    const [discovery, patients, orderables] = await Promise.all([
      getJson("/cds-services"),
      getJson("/demo/api/patients"),
      getJson("/demo/api/orderables"),
    ]);
    state.services.select = discovery.services.find((service) => service.hook === "order-select") ?? null;
    state.services.sign = discovery.services.find((service) => service.hook === "order-sign") ?? null;
    state.patients = patients.patients;
    state.orderables = orderables.orderables;
    const names = [state.services.select, state.services.sign].filter(Boolean).map((service) => service.id);
    $("service-status").textContent = `Connected: ${names.join(", ")}`;
    $("service-status").classList.add("ok");
  } catch (failure) {
    $("service-status").textContent = `The service could not be reached: ${failure.message}`;
    $("service-status").classList.add("bad");
    showError(`Start-up failed: ${failure.message}`);
    return;
  }

  const select = $("patient-select");
  select.replaceChildren(
    ...state.patients.map((patient) => el("option", { text: patient.label, attrs: { value: patient.key } })),
  );
  select.addEventListener("change", () => {
    history.replaceState(null, "", `?patient=${encodeURIComponent(select.value)}`);
    selectBundledPatient(select.value);
  });
  for (const radio of document.querySelectorAll('input[name="source"]')) {
    radio.addEventListener("change", () => {
      state.source = radio.value;
      $("bundled-form").hidden = radio.value !== "bundled";
      $("fhir-form").hidden = radio.value !== "fhir";
      if (radio.value === "bundled") selectBundledPatient(select.value);
    });
  }
  $("fhir-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadFhirPatient($("fhir-base").value.trim(), $("fhir-patient").value.trim(), $("fhir-token").value.trim());
  });
  $("search").addEventListener("input", renderResults);
  $("sign").addEventListener("click", sign);
  $("sign-anyway").addEventListener("click", finishSigning);
  $("raw-toggle").addEventListener("change", renderExchanges);

  const wanted = new URLSearchParams(location.search).get("patient");
  const initial = state.patients.some((patient) => patient.key === wanted) ? wanted : state.patients[0]?.key;
  select.value = initial;
  selectBundledPatient(initial);
  renderResults();
  document.body.dataset.ready = "true";
}

start();
