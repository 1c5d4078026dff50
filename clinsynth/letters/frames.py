"""Sentence frames: how a letter states one fact (or a list of facts) with its assertion.

A frame is a format string over `{x}` (the fact's words, verbatim from `RecipeFact.say`) and
`{m}` (an optional modality: "CT-morphologisch ", "sonographisch " ...). Frames are chosen per
fact kind and assertion, never per section, so the section a fact sits in says nothing about its
assertion; within those, what the fact is narrows them (`choose`): a present diagnosis by its
course (chronic comorbidity, acute event, the stay's reason), a procedure by its OPS chapter
(diagnostic vs therapeutic), a drug by its cycle (start verbs at cycle 1 only). Cues come before
or after the noun. No frame needs the noun's gender or number (no article, no finite verb
agreeing with the fact's name); a name that starts with an adjective ("zerebrale Metastasen")
skips frames that would need its dative ("Nachweis von", "Bei", "Z.n.") and takes label forms.

Fillers (`FILLER`) state no fact: no diagnosis, drug, code, value, date, and no negation,
suspicion or history cue, so they never look like an unlabelled fact. Those that presuppose
something about the stay (a therapy, a port, cisplatin, an analgesic, an elective admission, a
good or poor AZ) name it in `FILLER_NEEDS` and are drawn only where the recipe has it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from clinsynth.sampling.recipe import RecipeFact

# ---------------------------------------------------------------------------- modalities
#: modality prefixes by what the fact's name suggests (keyword -> modalities); "" = none
MODALITIES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (
        ("metasta", "raumforderung", "erguss", "embolie", "thrombose", "läsion", "filiae", "herd", "aszites"),
        (
            "CT-morphologisch ",
            "sonographisch ",
            "bildmorphologisch ",
            "MR-tomographisch ",
            "computertomographisch ",
            "radiologisch ",
            "im Staging-CT ",
            "in der Bildgebung ",
        ),
    ),
    (
        (
            "infekt",
            "sepsis",
            "anämie",
            "neutropenie",
            "insuffizienz",
            "syndrom",
            "toxizität",
            "hypo",
            "hyper",
        ),
        ("laborchemisch ", "klinisch ", "klinisch und laborchemisch ", "laborchemisch und klinisch "),
    ),
    (
        ("karzinom", "dysplasie", "rezidiv", "malign", "lymphom", "tumor", "neoplas", "-ca", " ca"),
        ("histologisch ", "endoskopisch ", "bioptisch ", "feingeweblich ", "zytologisch "),
    ),
    (("pneumonie", "fraktur", "ileus", "stenose"), ("radiologisch ", "klinisch ", "im Röntgen ")),
)
GENERIC_MODALITIES = ("klinisch ", "anamnestisch ")


def modalities(name: str) -> tuple[str, ...]:
    low = name.lower()
    for keys, mods in MODALITIES:
        if any(k in low for k in keys):
            return mods
    return GENERIC_MODALITIES


# ---------------------------------------------------------------------------- single-fact frames
#: (frame id prefix, frames) per assertion for findings (diagnoses, tumours as entities)
FINDING: dict[str, tuple[str, ...]] = {
    "present": (
        "{x}",
        "{m}Nachweis von {x}",
        "Im Verlauf {x}",
        "Neu aufgetreten: {x}",
        "Komplizierend {x}",
        "Es zeigte sich {m}das Bild von {x}",
        "Bei {x} erfolgte eine symptomatische Behandlung",
        "{m}gesichert: {x}",
        "{x}, behandlungsbedürftig",
        "Im stationären Verlauf Auftreten von {x}",
        "Therapiebedürftig: {x}",
    ),
    "negated": (
        "{M}kein Hinweis auf {x}",
        "{M}kein Anhalt für {x}",
        "{M}kein Nachweis von {x}",
        "Kein Anhalt für das Vorliegen von {x}",
        "{M}ohne Hinweis auf {x}",
        "Es ergab sich {m}kein Hinweis auf {x}",
        "Es fand sich {m}kein Anhalt für {x}",
        "Ausschluss von {x}",
        "Kein Verdacht auf {x}",
        "Ein Anhalt für {x} besteht {m}nicht",
        "{M}keine Hinweise auf {x}",
        "Bislang {m}kein Hinweis auf {x}",
        "Der V.a. {x} bestätigte sich {m}nicht",
        "Der Verdacht auf {x} hat sich nicht bestätigt",
        "{x} {m}ausgeschlossen",
        "{x} {m}nicht nachweisbar",
        "{x} {m}nicht nachgewiesen",
        "{x} {m}sicher ausgeschlossen",
        "{x} {m}nicht bestätigt",
        "{x}, ausgeschlossen",
        "{x} - {m}negativ",
        "{x} {m}nicht abgrenzbar",
    ),
    "suspected": (
        "V.a. {x}",
        "{M}V.a. {x}",
        "Verdacht auf {x}",
        "Dringender V.a. {x}",
        "DD {x}",
        "{M}DD: {x}",
        "A.e. {x}",
        "Am ehesten {x}",
        "{M}vereinbar mit {x}",
        "Fraglich {x}",
        "Bild wie bei {x}",
        "{x} {m}nicht sicher auszuschließen",
        "{x} wahrscheinlich",
        "{x} (V.a.)",
        "{x}, fraglich",
        "{x} (DD)",
        "{x} vermutet, Abklärung ambulant",
        "{x} möglich, Kontrolle empfohlen",
    ),
    "historical": (
        "Z.n. {x}",
        "Zustand nach {x}",
        "St.p. {x}",
        "Z. n. {x}",
        "Bek. {x}, ausgeheilt",
        "{x} in der Vorgeschichte",
        "Anamnestisch {x}, abgeschlossen",
        "{x} (anamnestisch, ausgeheilt)",
        "Vorgeschichte: {x}",
        "Früher {x}, aktuell ohne Bedeutung",
        "Ehemals {x}",
        "{x} (Z.n.)",
    ),
}
#: present diagnoses by `say["course"]`: a comorbidity known before the stay is no new event,
#: the stay's reason is what leads; only acute events of this stay take "Komplizierend", "Neu ..."
FINDING_PRESENT_BY_COURSE: dict[str, tuple[str, ...]] = {
    "acute": FINDING["present"],
    "chronic": (
        "{x}",
        "Vorbekannt: {x}",
        "{x} (vorbekannt)",
        "{x}, bekannt",
        "Bekannte Begleiterkrankung: {x}",
        "Komorbidität: {x}",
        "Begleitend {x}",
    ),
    "leading": (
        "{x}",
        "Klinisch führend war {x}",
        "Diagnostiziert wurde {x}",
        "Aktuell {x}",
        "Befund: {x}",
        "{m}gesichert: {x}",
        "{m}Nachweis von {x}",
    ),
}
#: dated historical forms ({d} = the date as written)
FINDING_DATED_HISTORY = (
    "Z.n. {x} {d}",
    "Z.n. {x} ({d})",
    "Zustand nach {x} {d}",
    "{x} {d}, ausgeheilt",
    "St.p. {x} {d}",
    "{d}: {x} (Vorgeschichte)",
)

PROCEDURE: dict[str, tuple[str, ...]] = {
    "present": (
        "{x}",
        "Durchführung: {x}",
        "Es erfolgte: {x}",
        "{x}, komplikationslos",
        "Elektiv {x}",
        "{x} in domo",
        "Durchgeführt: {x}",
        "Therapeutisch {x}",
        "Zur Diagnostik erfolgte: {x}",
        "Diagnostisch: {x}",
        "{x} problemlos",
    ),
    "negated": (
        "{x} nicht durchgeführt",
        "{x} nicht erfolgt",
        "Auf {x} wurde verzichtet",
        "Verzicht auf {x}",
        "{x} vom Pat. abgelehnt",
        "Keine Durchführung von {x}",
        "{x} wurde nicht durchgeführt",
        "Von {x} wurde abgesehen",
        "{x} nicht indiziert und nicht erfolgt",
    ),
    "historical": (
        "Z.n. {x}",
        "St.p. {x}",
        "Zustand nach {x}",
        "{x} (auswärts, Vorgeschichte)",
        "Vorausgegangen war {x}",
        "Früher {x}",
    ),
    "suspected": (
        "Fraglich {x} (auswärts, Unterlagen ausstehend)",
        "Anamnestisch fraglich {x}",
        "{x} (fraglich)",
    ),
}
PROCEDURE_DATED: dict[str, tuple[str, ...]] = {
    "present": (
        "{d}: {x}",
        "{x} am {d}",
        "Am {d} {x}",
        "{x} ({d})",
        "Am {d} erfolgte {x}",
        "{x} am {d}, komplikationslos",
        "Durchgeführt: {x} am {d}",
    ),
    "historical": ("Z.n. {x} {d}", "Z.n. {x} ({d})", "St.p. {x} {d}", "{d}: {x} (Vorgeschichte)"),
    "negated": ("{x} am {d} abgesagt, nicht erfolgt", "{x} ({d} geplant) nicht durchgeführt"),
    "suspected": ("Fraglich {x} {d} (Unterlagen ausstehend)",),
}

MEDICATION: dict[str, tuple[str, ...]] = {
    "present": (
        "{x}",
        "Gabe von {x}",
        "Therapie mit {x}",
        "Einleitung einer Therapie mit {x}",
        "{x} wurde fortgeführt",
        "Neu angesetzt: {x}",
        "Fortführung von {x}",
        "Wir begannen {x}",
        "Medikamentös {x}",
    ),
    "negated": (
        "Keine Gabe von {x}",
        "Auf {x} wurde verzichtet",
        "{x} nicht verabreicht",
        "Verzicht auf {x}",
        "{x} nicht eingenommen",
        "Eine Therapie mit {x} erfolgte nicht",
        "{x} nicht gegeben",
        "{x} wird nicht eingenommen",
    ),
    "historical": (
        "{x} abgesetzt",
        "Z.n. Therapie mit {x}",
        "Vormals {x}",
        "Ehemals {x}, beendet",
        "Früher {x}",
        "{x} (frühere Medikation)",
        "Die Therapie mit {x} ist abgeschlossen",
    ),
    "suspected": ("Fragliche Einnahme von {x}", "{x} (fraglich)", "Einnahme von {x} nicht sicher"),
}

#: a drug the patient does not tolerate (medication context "allergy"); {x} = the drug's name
ALLERGY: dict[str, tuple[str, ...]] = {
    "present": (
        "Unverträglichkeit gegen {x}",
        "Allergie gegen {x}",
        "Bekannte Unverträglichkeit: {x}",
        "Allergien: {x}",
        "Unverträglichkeiten: {x}",
    ),
    "suspected": (
        "Unverträglichkeit gegen {x} (V.a.)",
        "Unverträglichkeit gegen {x} (fraglich)",
        "Allergie gegen {x} fraglich",
        "Allergie gegen {x} vermutet",
    ),
    "negated": ("Unverträglichkeit gegen {x} ausgeschlossen", "Allergie gegen {x} verneint"),
    "historical": ("Unverträglichkeit gegen {x}, abgeklungen", "Allergie gegen {x}, früher"),
}

LAB: dict[str, tuple[str, ...]] = {
    "present": ("{x}",),
    "negated": ("{x} negativ", "{x} nicht nachweisbar", "Kein Nachweis von {x}", "{x} nicht nachgewiesen"),
    "historical": ("Vorwert {x}", "Zuvor {x}", "Vorbefund: {x}", "Vorwerte: {x}"),
    "suspected": ("{x} (fraglich)", "Fraglich {x}", "{x}, fraglich"),
}

VITAL: dict[str, tuple[str, ...]] = {
    "present": ("{x}",),
    "negated": ("{x} negativ", "{x} verneint"),
    "historical": ("Vorwert {x}", "Zuvor {x}", "Vorbefund: {x}"),
    "suspected": ("{x} (fraglich)", "Fraglich {x}"),
}

RISK: dict[str, tuple[str, ...]] = {
    "present": ("{x}", "Bek. {x}", "Risikofaktor: {x}", "{x} (aktuell)", "Noxen: {x}"),
    "negated": ("{x} verneint", "{x} wird verneint", "Kein Anhalt für {x}", "Noxen: {x} verneint"),
    "historical": ("Z.n. {x}", "Ehemals {x}", "{x} (früher, beendet)", "Anamnestisch {x}, beendet"),
    "suspected": ("Fraglich {x}", "V.a. {x}"),
}

RADIO: dict[str, tuple[str, ...]] = {
    "present": ("{x}", "Es erfolgte {x}", "Durchführung: {x}", "Aktuell {x}"),
    "historical": ("Z.n. {x}", "St.p. {x}", "Zustand nach {x}", "Vorausgegangen war {x}"),
    "negated": ("Keine {x}", "Auf {x} wurde verzichtet", "{x} nicht erfolgt", "Verzicht auf {x}"),
    "suspected": ("Fraglich {x} (Unterlagen ausstehend)",),
}

#: frames over a list of facts: every name written in full ({x} = "A, B oder C")
LIST_NEGATED = (
    "{M}kein Hinweis auf {x}",
    "{M}kein Anhalt für {x}",
    "Kein Nachweis von {x}",
    "{x} {m}ausgeschlossen",
    "{x} {m}nicht nachweisbar",
    "Es fanden sich {m}keine Hinweise auf {x}",
)
LIST_SUSPECTED = ("V.a. {x}", "DD {x}", "{M}vereinbar mit {x}")
LIST_HISTORICAL = ("Z.n. {x}", "Vorgeschichte: {x}", "St.p. {x}", "{x} in der Vorgeschichte")

FRAMES: dict[str, Mapping[str, tuple[str, ...]]] = {
    "diagnosis": FINDING,
    "tumor": FINDING,
    "procedure": PROCEDURE,
    "radiotherapy": RADIO,
    "medication": MEDICATION,
    "lab": LAB,
    "vital": VITAL,
    "risk_factor": RISK,
    "allergy": ALLERGY,
}

# ---------------------------------------------------------------------------- fillers
#: sentences that state no fact (see the module docstring), by section
FILLER: dict[str, tuple[str, ...]] = {
    "anamnese": (
        "Die Vorstellung erfolgte in Begleitung der Angehörigen.",
        "Pat. berichtet über zunehmende Abgeschlagenheit und verminderte Belastbarkeit.",
        "Appetit und Gewicht seien in den letzten Wochen stabil gewesen.",
        "Stuhlgang und Miktion unauffällig.",
        "Die häusliche Versorgung ist gesichert, Pat. lebt mit dem Partner zusammen.",
        "Pat. ist über die Erkrankung umfassend aufgeklärt.",
        "Aktuell bestehe eine leichte Müdigkeit, ansonsten gehe es gut.",
        "Die Vorbefunde lagen zur Aufnahme vor.",
        "Schlaf gut, Appetit ordentlich.",
        "Pat. sei im Alltag weitgehend selbstständig.",
        "Die Aufnahme erfolgte elektiv über unsere Ambulanz.",
        "Zur Vorgeschichte verweisen wir auf unsere Vorbriefe.",
    ),
    "aufnahmebefund": (
        "Pat. wach, orientiert, kooperativ.",
        "Herz: Herztöne rein, rhythmisch.",
        "Pulmo: vesikuläres Atemgeräusch bds.",
        "Abdomen: weich, regelrechte Darmgeräusche.",
        "Haut und Schleimhäute gut durchblutet.",
        "Extremitäten frei beweglich.",
        "Neurologisch orientierend o.B.",
        "Cor und Pulmo auskultatorisch o.B.",
        "Port re. pectoral reizlos.",
        "Schleimhäute feucht, Zunge sauber.",
        "LK-Stationen palpatorisch unauffällig.",
        "Nierenlager bds. frei.",
        "Pulmo bds. gut belüftet.",
    ),
    "befunde": (
        "Die übrigen Parameter lagen im Referenzbereich.",
        "Alle weiteren Werte im Normbereich.",
        "Befunde im Einzelnen siehe Anlage.",
        "Das Differentialblutbild war unauffällig.",
    ),
    "verlauf": (
        "Die Therapie wurde insgesamt gut toleriert.",
        "Die Mobilisation gelang zügig.",
        "Pat. während des gesamten Aufenthaltes kreislaufstabil.",
        "Über Nebenwirkungen und Verhaltensmaßnahmen wurde ausführlich aufgeklärt.",
        "Die Schmerzen waren unter der Basismedikation gut beherrschbar.",
        "Der Kostaufbau gelang problemlos.",
        "Die Vitalparameter waren im Verlauf stabil.",
        "Die Infusionen liefen über den liegenden Port.",
        "Der Fall wurde in unserer interdisziplinären Tumorkonferenz besprochen.",
        "Physiotherapeutisch erfolgte eine Mobilisation.",
        "Der Sozialdienst wurde hinzugezogen.",
        "Die Ernährungsberatung wurde angeboten.",
        "Die Prähydrierung erfolgte nach Schema.",
        "Die Laborkontrollen im Verlauf zeigten sich stabil.",
        "Die Flüssigkeitsbilanz war ausgeglichen.",
        "Pat. konnte sich im Verlauf zunehmend selbst versorgen.",
        "Die Schmerzmedikation wurde im Verlauf angepasst.",
        "Eine psychoonkologische Mitbetreuung wurde angeboten und angenommen.",
        "Die Gabe erfolgte über einen peripheren Zugang.",
        "Die Pflege berichtete über eine ruhige Nacht.",
        "Die CTX konnte planmäßig appliziert werden.",
        "Antiemese nach Schema, Analgesie b.B.",
        "Pat. unter der CTX subjektiv beschwerdearm.",
    ),
    "epikrise": (
        "Entlassung in gebessertem AZ nach Hause.",
        "Die Entlassung erfolgt in die häusliche Umgebung.",
        "Pat. wurde über den weiteren Verlauf informiert.",
        "Wir bitten um regelmäßige Blutbildkontrollen.",
        "Bei Fieber über 38 °C bitten wir um umgehende Vorstellung.",
        "Für Rückfragen stehen wir gern zur Verfügung.",
        "Die Befunde wurden ausführlich besprochen.",
        "Eine Wiedervorstellung bei Beschwerden ist jederzeit möglich.",
        "Insgesamt zeigte sich ein erfreulicher Verlauf.",
        "Das weitere Vorgehen wurde ausführlich besprochen.",
        "Pat. fühlt sich gut informiert und ist mit dem Procedere einverstanden.",
        "Die Angehörigen wurden in das Gespräch einbezogen.",
        "Fortführung der CTX wie geplant.",
        "Pat. in stabilem AZ entlassen.",
    ),
    "procedere": (
        "Wir bitten um Kontrolle von BB und Elektrolyten beim Hausarzt.",
        "Wiedervorstellung bei Beschwerden jederzeit möglich.",
        "Die Termine wurden dem Pat. mitgegeben.",
        "Eine Vorstellung in der Tumorkonferenz ist angemeldet.",
        "Weitere Terminvereinbarung über unsere Ambulanz.",
        "Die weitere Betreuung erfolgt über die onkologische Schwerpunktpraxis.",
        "Ein Rezept für die Entlassmedikation wurde ausgestellt.",
        "Bei Verschlechterung bitten wir um frühzeitige Wiedervorstellung.",
        "Pat. ist mit dem Vorgehen einverstanden.",
        "Die Unterlagen wurden mitgegeben.",
        "Laborkontrollen wöchentlich beim HA.",
        "Vorstellung in unserer Ambulanz b.B.",
    ),
}
#: what a filler presupposes about the stay (see `render.traits`); a filler is drawn only when the
#: recipe has every trait it needs, so no filler asserts a therapy, port, infusion or analgesic
#: change that gold lacks. Traits: therapy (systemic therapy given this stay), cisplatin, port (a
#: port procedure), noport, analgesic (an analgesic in gold), elective / emergency (stay kind),
#: good_az / poor_az (ECOG 0-1 / >= 2 written, or no ECOG written).
FILLER_NEEDS: dict[str, tuple[str, ...]] = {
    "Aktuell bestehe eine leichte Müdigkeit, ansonsten gehe es gut.": ("good_az",),
    "Pat. berichtet über zunehmende Abgeschlagenheit und verminderte Belastbarkeit.": ("poor_az",),
    "Pat. sei im Alltag weitgehend selbstständig.": ("good_az",),
    "Die Aufnahme erfolgte elektiv über unsere Ambulanz.": ("elective",),
    "Port re. pectoral reizlos.": ("port",),
    "Die Therapie wurde insgesamt gut toleriert.": ("therapy",),
    "Über Nebenwirkungen und Verhaltensmaßnahmen wurde ausführlich aufgeklärt.": ("therapy",),
    "Die Schmerzen waren unter der Basismedikation gut beherrschbar.": ("analgesic",),
    "Die Infusionen liefen über den liegenden Port.": ("therapy", "port"),
    "Die Prähydrierung erfolgte nach Schema.": ("therapy", "cisplatin"),
    "Die Schmerzmedikation wurde im Verlauf angepasst.": ("analgesic",),
    "Die Gabe erfolgte über einen peripheren Zugang.": ("therapy", "noport"),
    "Die CTX konnte planmäßig appliziert werden.": ("therapy",),
    "Antiemese nach Schema, Analgesie b.B.": ("therapy",),
    "Pat. unter der CTX subjektiv beschwerdearm.": ("therapy",),
    "Fortführung der CTX wie geplant.": ("therapy",),
    "Guter AZ, normaler EZ.": ("good_az",),
    "Pat. in gutem AZ und adipösem EZ.": ("good_az",),
    "Altersentsprechender AZ, guter EZ.": ("good_az",),
    "Reduzierter AZ, schlanker EZ.": ("poor_az",),
    "Deutlich reduzierter AZ, kachektischer EZ.": ("poor_az",),
    "Entlassung in gebessertem AZ nach Hause.": ("good_az",),
}
#: the first sentence of the Anamnese: how the patient came (elective vs emergency by stay kind)
ADMISSION: dict[str, tuple[str, ...]] = {
    "therapy": (
        "Die Aufnahme erfolgte elektiv zur Fortführung der Therapie.",
        "Stationäre Aufnahme zur geplanten Therapie.",
        "Geplante Aufnahme.",
        "Die Vorstellung erfolgte über unsere Ambulanz.",
    ),
    "diagnostic": (
        "Pat. stellte sich zur weiteren Abklärung vor.",
        "Geplante Aufnahme zur Diagnostik.",
        "Die Einweisung erfolgte durch den Hausarzt.",
        "Die Vorstellung erfolgte über unsere Ambulanz.",
    ),
    "surgery": ("Geplante Aufnahme.", "Die Einweisung erfolgte durch den Hausarzt.", "Elektive Aufnahme."),
    "complication": (
        "Aufnahme über die Notaufnahme.",
        "Die Vorstellung erfolgte notfallmäßig.",
        "Die Einweisung erfolgte durch den Hausarzt.",
    ),
    "": ("Die Einweisung erfolgte durch den Hausarzt.", "Die Vorstellung erfolgte über unsere Ambulanz."),
}
#: the Epikrise's first sentence (optional), with the traits it presupposes
EPIKRISE_OPENERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Zusammenfassend stationäre Aufnahme zur geplanten Therapie.", ("therapy", "elective")),
    ("Wir sahen {pat} zur Fortführung der Behandlung.", ("therapy", "elective")),
    ("Im Rahmen des aktuellen Aufenthaltes erfolgte die weitere Therapie.", ("therapy",)),
    ("Zusammenfassend stationäre Aufnahme zur weiteren Abklärung.", ("diagnostic",)),
    ("Zusammenfassend notfallmäßige stationäre Aufnahme.", ("emergency",)),
)
#: general condition at admission (one per letter, no ECOG number: that is a tumour fact)
AZ_EZ = (
    "Guter AZ, normaler EZ.",
    "Reduzierter AZ, schlanker EZ.",
    "Pat. in gutem AZ und adipösem EZ.",
    "AZ leicht reduziert, EZ normal.",
    "Altersentsprechender AZ, guter EZ.",
    "Deutlich reduzierter AZ, kachektischer EZ.",
)
#: the cue words fillers must never hold (checked by a test)
CUE_WORDS = re.compile(
    r"\b(kein\w*|nicht|ohne|ausgeschlossen|verneint|V\.a\.|Verdacht|DD|Z\.\s?n\.|Zustand nach|St\.p\.)\b"
)

# ---------------------------------------------------------------------------- openings
OPENINGS: dict[str, tuple[str, ...]] = {
    "full": (
        "wir berichten über {o} {p}, geb. {b}, {rel} sich vom {s} bis {e} in unserer stationären "
        "Behandlung befand.",
        "wir berichten Ihnen über {o} {p}, geb. {b}, die stationäre Behandlung vom {s} bis {e}.",
        "vielen Dank für die Zuweisung {g} {p} (geb. {b}), {rel} vom {s} bis {e} stationär behandelt wurde.",
        "nachfolgend berichten wir über den stationären Aufenthalt {g} {p}, geb. {b}, vom {s} bis {e}.",
        "{p}, geb. {b}, befand sich vom {s} bis {e} in unserer stationären Behandlung.",
        "wir berichten über o.g. {pat}, {rel} sich vom {s} - {e} bei uns in Behandlung befand.",
    ),
    "short": (
        "vorab ein kurzer Bericht über {o} {p}, geb. {b}, stationär vom {s} bis {e}. "
        "Ein ausführlicher Brief folgt.",
        "wir entlassen heute {o} {p} (geb. {b}), Aufenthalt {s} bis {e}. Kurzbericht, Arztbrief folgt.",
        "zur Information vorab: {p}, geb. {b}, stationär vom {s} bis {e}.",
    ),
    "transfer": (
        "wir verlegen heute {o} {p}, geb. {b}, {rel} sich seit dem {s} in unserer Behandlung befand, "
        "{reason}. Aufnehmende Abteilung: {dest}.",
        "{p}, geb. {b}, wird nach stationärer Behandlung vom {s} bis {e} {reason} verlegt "
        "(Übernahme: {dest}).",
        "wir bitten um Übernahme {g} {p} (geb. {b}), stationär bei uns seit {s}, {reason}. "
        "Zielstation: {dest}.",
        "Verlegung {g} {p}, geb. {b}, am {e} {reason}. Weiterbehandlung: {dest}.",
    ),
}
DESTINATIONS = (
    "Klinik für Strahlentherapie",
    "Palliativstation",
    "Klinik für Allgemein- und Viszeralchirurgie",
    "Geriatrie",
    "Rehabilitationsklinik",
    "Intensivstation",
)
REASONS = (
    "zur Fortführung der Therapie",
    "zur weiteren Behandlung",
    "zur palliativmedizinischen Mitbetreuung",
    "zur Anschlussheilbehandlung",
    "zur operativen Versorgung",
)
CLOSINGS = (
    "Mit freundlichen kollegialen Grüßen",
    "Mit freundlichen Grüßen",
    "Mit kollegialen Grüßen",
    "Für Rückfragen stehen wir gern zur Verfügung.\n\nMit freundlichen Grüßen",
)


# ---------------------------------------------------------------------------- choosing and filling
def fill(frame: str, x: str, m: str = "", d: str = "") -> str:
    """A frame with its words; `{M}` is the modality at a sentence start (capitalised). A sentence
    that starts with the fact's own words keeps them as written (verbatim beats capitalisation)."""
    out = frame.replace("{M}", m[:1].upper() + m[1:] if m else "").replace("{m}", m)
    starts_with_fact = out.startswith(("{x}", "{d}"))
    out = out.replace("{x}", x).replace("{d}", d)
    return out if starts_with_fact else out[:1].upper() + out[1:]


#: a frame that puts the name after a dative preposition or "Z.n.": an adjective-initial name
#: ("perkutane Leberbiopsie") would need inflection there, so such names skip these frames
DATIVE_SLOT = re.compile(r"(?:\b(?:[Vv]on|[Bb]ei|mit|nach)|Z\.\s?n\.|St\.p\.)\s*(?:\{[mM]\})?\{x\}")
#: present drug frames that say a therapy starts (cycle 1 only) or goes on (cycle > 1 only)
START_FRAMES = frozenset(("Einleitung einer Therapie mit {x}", "Neu angesetzt: {x}", "Wir begannen {x}"))
CONTINUE_FRAMES = frozenset(("{x} wurde fortgeführt", "Fortführung von {x}"))
#: procedure frames that call it diagnostic / therapeutic (chosen by OPS chapter)
DIAGNOSTIC_WORDS = re.compile(r"Diagnosti")
THERAPEUTIC_WORDS = re.compile(r"Therapeuti")


def adjective_initial(name: str) -> bool:
    """A name that starts with a lower-case word ("zerebrale Metastasen", "art. Hypertonie")."""
    return name[:1].islower()


def ops_chapter(code: str) -> str:
    """'diagnostic' (OPS 1-, 3-), 'therapeutic' (5-, 6-, 8-) or '' (no OPS code)."""
    code = code.strip()
    if code[:2] in ("1-", "3-"):
        return "diagnostic"
    if code[:2] in ("5-", "6-", "8-"):
        return "therapeutic"
    return ""


def usable(
    frame: str,
    *,
    name: str = "",
    chapter: str | None = None,
    cycle: str = "",
    avoid: re.Pattern[str] | None = None,
    dative: bool = False,
) -> bool:
    """May this frame state this fact? (grammar of the name, procedure type, cycle, caller's ban);
    `dative`: the fact carries the inflected form of its adjective-initial name (`say["name_dat"]`)."""
    if adjective_initial(name) and not dative and DATIVE_SLOT.search(frame):
        return False
    if chapter is not None:
        if chapter != "diagnostic" and DIAGNOSTIC_WORDS.search(frame):
            return False
        if chapter != "therapeutic" and THERAPEUTIC_WORDS.search(frame):
            return False
    if cycle:
        if cycle != "1" and frame in START_FRAMES:
            return False
        if cycle == "1" and frame in CONTINUE_FRAMES:
            return False
    return not (avoid is not None and avoid.search(frame))


def choose(
    rng: random.Random,
    kind: str,
    assertion: str,
    name: str,
    *,
    dated: str = "",
    course: str = "",
    chapter: str | None = None,
    cycle: str = "",
    avoid: re.Pattern[str] | None = None,
    dative: bool = False,
) -> tuple[str, str, str]:
    """(frame, modality, frame id) for one fact; the id names the frame the report counts.

    `course` (chronic | acute | leading) picks a present diagnosis's frames; `dative` lets an
    adjective-initial name take dative frames (the caller writes `say["name_dat"]` there);
    `chapter` (a procedure's OPS chapter, see `ops_chapter`) keeps "Zur Diagnostik" off therapies
    and "Therapeutisch" off diagnostics; `cycle` keeps start verbs at cycle 1, continuation after it."""
    frames = FRAMES.get(kind, FINDING).get(assertion) or FINDING[assertion]
    if kind == "diagnosis" and assertion == "present" and course in FINDING_PRESENT_BY_COURSE:
        frames = FINDING_PRESENT_BY_COURSE[course]
    if dated:
        if kind in ("procedure",):
            frames = PROCEDURE_DATED.get(assertion, frames)
        elif assertion == "historical" and kind in ("diagnosis", "tumor"):
            frames = FINDING_DATED_HISTORY
    rules = {"name": name, "chapter": chapter, "cycle": cycle, "avoid": avoid, "dative": dative}
    ok = [f for f in frames if usable(f, **rules)]  # type: ignore[arg-type]
    if not ok and dated:  # e.g. every dated history frame starts with "Z.n.": the undated ones
        base = FRAMES.get(kind, FINDING).get(assertion) or FINDING[assertion]
        ok = [f for f in base if usable(f, **rules)]  # type: ignore[arg-type]
    frames = tuple(ok) or frames
    frame = frames[rng.randrange(len(frames))]
    mod = ""
    if ("{m}" in frame or "{M}" in frame) and rng.random() < 0.55:
        mods = modalities(name)
        mod = mods[rng.randrange(len(mods))]
    return frame, mod, f"{kind}.{assertion}:{frame}|{mod.strip()}"


def join_names(names: Sequence[str], rng: random.Random, conj: str = "oder") -> str:
    """ "A, B oder C": every name in full (no "Leber- oder Lungenmetastasen")."""
    if len(names) == 1:
        return names[0]
    # never "; ": a semicolon ends the cue's scope ("keine Hinweise auf A; B oder C" negates only A)
    return ", ".join(names[:-1]) + f" {conj} " + names[-1]


def list_frame(rng: random.Random, assertion: str, names: Sequence[str] = ()) -> str:
    frames = {"negated": LIST_NEGATED, "suspected": LIST_SUSPECTED, "historical": LIST_HISTORICAL}[assertion]
    if any(adjective_initial(n) for n in names):
        frames = tuple(f for f in frames if not DATIVE_SLOT.search(f)) or frames
    return frames[rng.randrange(len(frames))]


#: `say` keys that steer the rendering but are no text (role, staging kind, drug context, cue flag)
NOT_WRITTEN = frozenset(("role", "staging", "context", "cued", "course", "name_dat"))


def say_values(f: RecipeFact) -> list[str]:
    """Every string of `f.say` the letter must write verbatim (codes of drugs and labs excepted:
    ATC and LOINC codes are never written)."""
    out: list[str] = []
    for k, v in f.say.items():
        if k in NOT_WRITTEN or not v or isinstance(v, bool):
            continue
        if k == "code" and f.kind in ("medication", "lab", "vital"):
            continue
        if isinstance(v, (list, tuple)):
            out += [str(x) for x in v if x]
        elif isinstance(v, (str, int, float)):
            out.append(str(v))
    return out


Picker = Callable[[Sequence[Any]], Any]
