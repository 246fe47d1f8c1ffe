"""Django's ORM (psycopg 3 backend) through the cloaking proxy on cloaked databases.

Settings are configured once per process (module fixture) with two aliases on two
cloaked databases: `default` (Django's client-side parameter binding) and
`server_binding` (OPTIONS server_side_binding=True, real bound parameters). Models
are created with `schema_editor().create_model()` (no migrations for the test app);
`migrate` itself runs for django.contrib.contenttypes and auth.
"""

from __future__ import annotations

import datetime as dt
import sys
import types
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cloak_checks import assert_catalog_opaque, cloaked_database
from helpers import PgServer, ProxyProcess

DJANGO_APP = "pgcloak_django_app"


def _install_django_app(path: Path) -> None:
    """An importable, model-less app so Django resolves reverse relations of our models."""
    from django.apps import AppConfig

    package = types.ModuleType(DJANGO_APP)
    package.__path__ = []
    apps_module = types.ModuleType(f"{DJANGO_APP}.apps")

    class CloakTestConfig(AppConfig):
        name = DJANGO_APP
        label = "cloaktest"
        default_auto_field = "django.db.models.BigAutoField"

    CloakTestConfig.path = str(path)
    apps_module.CloakTestConfig = CloakTestConfig  # type: ignore[attr-defined]
    sys.modules[DJANGO_APP] = package
    sys.modules[f"{DJANGO_APP}.apps"] = apps_module


@pytest.fixture(scope="module")
def django_models(
    pg: PgServer,
    cloak_proxy: ProxyProcess,
    master_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """Django configured on two cloaked databases (client- and server-side binding)."""
    pytest.importorskip("django")
    import django
    from django.conf import settings
    from django.db import connections, models

    if settings.configured:
        pytest.skip("Django was configured elsewhere in this process")
    dbs = [cloaked_database(pg, master_key) for _ in range(2)]

    def db(name: str, **options: Any) -> dict[str, Any]:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": "postgres",
            "HOST": cloak_proxy.host,
            "PORT": str(cloak_proxy.port),
            "OPTIONS": options,
        }

    _install_django_app(tmp_path_factory.mktemp("django_app"))
    settings.configure(
        DATABASES={"default": db(dbs[0]), "server_binding": db(dbs[1], server_side_binding=True)},
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            f"{DJANGO_APP}.apps.CloakTestConfig",
        ],
        USE_TZ=True,
    )
    django.setup()

    class Author(models.Model):
        name = models.CharField(max_length=100, unique=True)
        born = models.DateField(null=True)

        class Meta:
            app_label = "cloaktest"
            db_table = "authors"

    class Book(models.Model):
        title = models.CharField(max_length=200, db_index=True)
        author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
        pages = models.IntegerField(default=100)
        price = models.DecimalField(max_digits=8, decimal_places=2)
        added = models.DateTimeField(auto_now_add=True)

        class Meta:
            app_label = "cloaktest"
            db_table = "books"
            constraints = [
                models.CheckConstraint(condition=models.Q(pages__gt=0), name="pages_gt_0")
            ]

    class Publisher(models.Model):
        label = models.CharField(max_length=50, unique=True)
        founded = models.IntegerField(null=True)

        class Meta:
            app_label = "cloaktest"
            db_table = "publishers"

    try:
        yield {
            "Author": Author,
            "Book": Book,
            "Publisher": Publisher,
            "dbs": dict(zip(settings.DATABASES, dbs, strict=True)),
        }
    finally:
        connections.close_all()
        for name in dbs:
            pg.drop_database(name)


DJANGO_NAMES = ("authors", "books", "name", "born", "title", "author_id", "pages", "price",
                "added", "pages_gt_0")  # fmt: skip


@pytest.mark.parametrize("alias", ["default", "server_binding"])
def test_django_orm(alias: str, django_models: dict[str, Any], pg: PgServer) -> None:
    from django.db import IntegrityError as DjangoIntegrityError
    from django.db import connections, transaction
    from django.db.models import Avg, Count, F, Q, Sum

    author_model, book_model = django_models["Author"], django_models["Book"]
    authors, books = author_model.objects.using(alias), book_model.objects.using(alias)
    with connections[alias].schema_editor() as editor:
        editor.create_model(author_model)
        editor.create_model(book_model)

    ada = authors.create(name="Ada", born=dt.date(1815, 12, 10))
    bob = authors.create(name="Bob")
    books.create(title="Notes", author=ada, price=Decimal("12.50"), pages=60)
    books.create(title="Sketch", author=ada, price=Decimal("3.99"))
    books.bulk_create([book_model(title=f"Bulk {i}", author=bob, price=i + 1) for i in range(5)])
    same, created = authors.get_or_create(name="Ada")
    assert (same.pk, created) == (ada.pk, False)

    cheap = books.filter(title__startswith="Bulk", price__gte=3).order_by("price")
    assert list(cheap.values_list("price", flat=True)) == [Decimal(3), Decimal(4), Decimal(5)]
    assert books.filter(Q(pages__lt=70) | Q(author__name="Bob")).count() == 6
    rows = list(books.select_related("author").filter(author__born__year=1815).order_by("title"))
    assert [(b.title, b.author.name) for b in rows] == [("Notes", "Ada"), ("Sketch", "Ada")]
    stats = authors.annotate(n=Count("books"), total=Sum("books__price")).order_by("name")
    assert [(a.name, a.n, a.total) for a in stats] == [
        ("Ada", 2, Decimal("16.49")),
        ("Bob", 5, Decimal("15.00")),
    ]
    agg = books.aggregate(pages=Sum("pages"), avg_price=Avg("price"))
    assert agg["pages"] == 660 and round(agg["avg_price"], 2) == Decimal("4.50")
    prefetched = authors.prefetch_related("books").get(name="Bob")
    assert len(prefetched.books.all()) == 5
    assert books.filter(pages__lt=70).update(pages=F("pages") + 1) == 1
    assert books.get(title="Notes").pages == 61

    with pytest.raises(RuntimeError), transaction.atomic(using=alias):
        authors.create(name="Rolled back")
        raise RuntimeError("roll back")
    assert not authors.filter(name="Rolled back").exists()
    with transaction.atomic(using=alias):
        authors.create(name="Kept")
        with pytest.raises(DjangoIntegrityError) as info, transaction.atomic(using=alias):
            authors.create(name="Ada")  # savepoint rolled back, outer block goes on
        assert "authors_name_key" in str(info.value)
    assert authors.filter(name="Kept").exists()
    with pytest.raises(DjangoIntegrityError, match="pages_gt_0"), transaction.atomic(using=alias):
        books.create(title="Empty", author=bob, price=1, pages=0)

    bob.delete()  # Django's collector deletes the books first
    assert books.count() == 2

    with pg.connect(django_models["dbs"][alias]) as direct:
        view = assert_catalog_opaque(direct, DJANGO_NAMES)
    assert view.kinds().get("r", 0) >= 2  # test_django_migrate may have added its tables


@pytest.mark.parametrize("alias", ["default", "server_binding"])
def test_django_introspection(alias: str, django_models: dict[str, Any]) -> None:
    """Django's pg_catalog introspection sees semantic names (what migrate relies on)."""
    from django.db import connections

    conn, publisher = connections[alias], django_models["Publisher"]
    with conn.schema_editor() as editor:
        editor.create_model(publisher)
    try:
        with conn.cursor() as cur:
            intro = conn.introspection
            assert "publishers" in intro.table_names(cur)
            columns = [f.name for f in intro.get_table_description(cur, "publishers")]
            assert columns == ["id", "label", "founded"]
            assert intro.get_primary_key_column(cur, "publishers") == "id"
            constraints = intro.get_constraints(cur, "publishers")
            assert "publishers_pkey" in constraints
            assert any(c["columns"] == ["label"] and c["unique"] for c in constraints.values())
            assert intro.get_sequences(cur, "publishers") == [
                {"name": "publishers_id_seq", "table": "publishers", "column": "id"}
            ]
    finally:
        with conn.schema_editor() as editor:
            editor.delete_model(publisher)


MIGRATED_NAMES = ("django_migrations", "django_content_type", "auth_user", "auth_group",
                  "auth_permission", "auth_user_groups", "auth_group_permissions",
                  "auth_user_user_permissions", "username", "app_label", "codename",
                  "content_type_id", "is_superuser", "last_login")  # fmt: skip


@pytest.mark.parametrize("alias", ["default", "server_binding"])
def test_django_migrate(alias: str, django_models: dict[str, Any], pg: PgServer) -> None:
    """`migrate` (contenttypes + auth) twice, then auth models with their M2M tables."""
    from django.contrib.auth.models import Group, Permission, User
    from django.contrib.contenttypes.models import ContentType
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", database=alias, verbosity=0, interactive=False)
    call_command("migrate", database=alias, verbosity=0, interactive=False)  # nothing to do
    with connections[alias].cursor() as cur:
        tables = set(connections[alias].introspection.table_names(cur))
    assert {"django_migrations", "auth_user", "auth_user_groups"} <= tables
    with connections[alias].cursor() as cur:
        cur.execute("SELECT count(*) FROM django_migrations WHERE app = %s", ["auth"])
        assert cur.fetchone()[0] >= 10

    perms = Permission.objects.using(alias)
    assert perms.filter(content_type__app_label="auth", codename="add_user").exists()
    user = User.objects.db_manager(alias).create_user("ada", "ada@example.org", "pw")
    editors = Group.objects.using(alias).create(name="editors")
    editors.permissions.add(*perms.filter(codename__startswith="change_"))
    user.groups.add(editors)
    found = User.objects.using(alias).filter(groups__permissions__codename="change_group")
    assert list(found.values_list("username", flat=True)) == ["ada"]
    author_type = ContentType.objects.db_manager(alias).get_for_model(django_models["Author"])
    assert (author_type.app_label, author_type.model) == ("cloaktest", "author")

    with pg.connect(django_models["dbs"][alias]) as direct:
        view = assert_catalog_opaque(direct, MIGRATED_NAMES)
    assert view.kinds().get("r", 0) >= 8
